"""What ``python -m train.main --help`` / ``--help_config`` prints about the configs, generated from
the config files themselves (so it cannot drift from them; ``tests/test_config_help.py``).

* The config files: every ``configs/*.py`` but ``common.py``, with the first line of its docstring,
  its variants (what its ``get_config`` accepts: the ``allowed`` names and ``values`` keys of its
  ``common.parse_arg(arg, allowed, values)`` call) and what its docstring says of them.
* The fields: every leaf of ``configs.common.base_config()`` with its default and its meaning, read
  from the comments beside (or just above) the line that sets it in ``configs/common.py``.
"""
import ast
import glob
import io
import os
import textwrap
import tokenize

from configs import common

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
_NOT_CONFIGS = ("__init__.py", "common.py")
_COLUMN = 44  # where a field's meaning starts


def _comments(source: str) -> tuple[dict, set]:
  """``({line: comment text}, {lines holding only a comment})`` of a Python source."""
  comments, alone = {}, set()
  for tok in tokenize.generate_tokens(io.StringIO(source).readline):
    if tok.type == tokenize.COMMENT:
      line = tok.start[0]
      comments[line] = tok.string
      if not tok.line[:tok.start[1]].strip():
        alone.add(line)
  return comments, alone


def _is_continuation(comment: str) -> bool:
  """A comment-only line indented past its ``#`` (``#     more words``) continues the comment of
  the line above; one that starts right after ``# `` opens the comment of the line below."""
  return comment.startswith("#  ")


def _meaning(node: ast.AST, comments: dict, alone: set) -> str:
  """The comment text of the statement or keyword ``node``: the comment-only lines just above it,
  the comment at the end of its last line and the continuation lines below that, joined."""
  parts = []
  above, line = [], node.lineno - 1
  while line in alone and not _is_continuation(comments[line]):
    above.append(comments[line])
    line -= 1
  parts += reversed(above)
  end = node.end_lineno
  if end in comments and end not in alone:
    parts.append(comments[end])
    line = end + 1
    while line in alone and _is_continuation(comments[line]):
      parts.append(comments[line])
      line += 1
  return " ".join(" ".join(p.lstrip("#").split()) for p in parts)


def _attribute_path(node: ast.AST, root: str) -> str | None:
  """``c.data.max_tokens`` → ``"data.max_tokens"`` (None unless the chain starts at ``root``)."""
  names = []
  while isinstance(node, ast.Attribute):
    names.append(node.attr)
    node = node.value
  if isinstance(node, ast.Name) and node.id == root and names:
    return ".".join(reversed(names))
  return None


def _called_function(node: ast.AST, functions: dict) -> ast.FunctionDef | None:
  """The module function ``node`` calls (``fusion_section()``), if any."""
  if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
    return functions.get(node.func.id)
  return None


def _dict_keywords(node: ast.AST):
  """The keywords of ``ConfigDict(dict(k=v, ...))`` / ``dict(k=v, ...)`` (else none)."""
  while isinstance(node, ast.Call):
    if node.keywords:
      return node.keywords
    node = node.args[0] if node.args else None
  return []


def _function_fields(fn: ast.FunctionDef, prefix: str, functions: dict, comments: dict,
                     alone: set, out: dict) -> None:
  """Fills ``out[path] = meaning`` for every field ``fn`` sets: ``c.a.b = v`` statements and the
  ``k=v`` keywords of a returned ``ConfigDict(dict(...))``; a value that calls another function of
  the module is followed into it."""
  def visit(path, value, node):
    callee = _called_function(value, functions)
    if callee is not None:
      _function_fields(callee, path + ".", functions, comments, alone, out)
    out[path] = _meaning(node, comments, alone)

  root = fn.args.args[0].arg if fn.args.args else "c"
  for stmt in ast.walk(fn):
    if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1:
      path = _attribute_path(stmt.targets[0], "c") or _attribute_path(stmt.targets[0], root)
      if path:
        visit(prefix + path, stmt.value, stmt)
    elif isinstance(stmt, ast.Return):
      for kw in _dict_keywords(stmt.value):
        if kw.arg:
          visit(prefix + kw.arg, kw.value, kw)


def field_meanings(path: str = os.path.join(CONFIG_DIR, "common.py"),
                   entry: str = "base_config") -> dict:
  """``{"data.max_tokens": "DMF §2.1: 30 tokens", ...}`` for every field ``entry`` sets.

  Args:
    path: the config module (``configs/common.py``).
    entry: the function that builds the config.

  Returns:
    Dotted field path → its comment text ("" when the line has none).
  """
  with open(path, encoding="utf-8") as f:
    source = f.read()
  tree = ast.parse(source)
  functions = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
  comments, alone = _comments(source)
  out = {}
  _function_fields(functions[entry], "", functions, comments, alone, out)
  return out


def config_leaves(config, prefix: str = "") -> dict:
  """Dotted path → value of every leaf of a ConfigDict (an empty section is a leaf: ``{}``)."""
  out = {}
  for key, value in config.items():
    path = prefix + key
    if hasattr(value, "items") and len(value):
      out.update(config_leaves(value, path + "."))
    else:
      out[path] = value.to_dict() if hasattr(value, "to_dict") else value
  return out


def config_variants(path: str) -> list:
  """The variants a config file's ``get_config`` accepts, in source order.

  Read from its ``common.parse_arg(arg, allowed, values)`` call: the names in ``allowed``, then
  ``key=<type>`` for each entry of ``values`` (e.g. ``slots=<int>``).

  Args:
    path: the config file.

  Returns:
    The variant names and ``key=<type>`` strings ([] if the file has no ``parse_arg`` call).
  """
  with open(path, encoding="utf-8") as f:
    tree = ast.parse(f.read())
  fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "get_config")
  for call in ast.walk(fn):
    if (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute)
        and call.func.attr == "parse_arg" and len(call.args) >= 2):
      names = list(ast.literal_eval(call.args[1]))
      values = call.args[2] if len(call.args) > 2 else next(
          (k.value for k in call.keywords if k.arg == "values"), None)
      if isinstance(values, ast.Dict):
        names += [f"{ast.literal_eval(k)}=<{ast.unparse(v)}>"
                  for k, v in zip(values.keys, values.values)]
      return names
  return []


def config_files() -> list:
  """The experiment config files, sorted (``configs/*.py`` but ``__init__``/``common``)."""
  return sorted(p for p in glob.glob(os.path.join(CONFIG_DIR, "*.py"))
                if os.path.basename(p) not in _NOT_CONFIGS)


def _variant_doc(doc: str) -> str:
  """The docstring's paragraph about variants/arguments (from "Variants"/"Arguments" on)."""
  lines = doc.splitlines()
  for i, line in enumerate(lines):
    if line.lstrip().startswith(("Variants", "Arguments")):
      block = [line]
      for nxt in lines[i + 1:]:
        if not nxt.strip():
          break
        block.append(nxt)
      return "\n".join(block)
  return ""


def describe_configs(width: int = 100) -> str:
  """The config files, each with its summary, variants and what its docstring says of them."""
  out = [textwrap.fill("Config files (--config=configs/<file>.py[:<variant>[,<variant>]]; the "
                       "commands that run them are in each file's docstring):", width=width)]
  for path in config_files():
    with open(path, encoding="utf-8") as f:
      doc = ast.get_docstring(ast.parse(f.read())) or ""
    name = os.path.relpath(path, os.path.dirname(CONFIG_DIR))
    out.append("")
    summary = " ".join(doc.split("\n\n", 1)[0].split())
    out.append(textwrap.fill(f"{name}  {summary}", width=width, subsequent_indent="    "))
    out.append(f"  variants: {', '.join(config_variants(path)) or '(none)'}")
    about = _variant_doc(doc)
    if about:
      out.append(textwrap.indent(about, "    "))
  return "\n".join(out)


def describe_fields(width: int = 100) -> str:
  """Every field of ``configs.common.base_config()``: ``--config.<path>``, default, meaning."""
  meanings = field_meanings()
  leaves = config_leaves(common.base_config())
  out = [textwrap.fill("Config fields and their defaults in configs/common.py (set with "
                       "--config.<field>=<value>; each config file and variant changes some of "
                       "them). The options of every fusion kind (model.fusion.<kind>.*) are "
                       "checked before a run, also those of kinds it does not train "
                       "(config.fusions):", width=width)]
  order = {p: i for i, p in enumerate(meanings)}  # as configs/common.py sets them
  for path in sorted(leaves, key=lambda p: order.get(p, len(order))):
    meaning, head = meanings.get(path, ""), f"  {path} = {leaves[path]!r}"
    if len(head) >= _COLUMN - 1:
      out.append(head)
      head = ""
    out.append(textwrap.fill(meaning or "-", width=width, initial_indent=f"{head:<{_COLUMN}}",
                             subsequent_indent=" " * _COLUMN))
  return "\n".join(out)


def render(width: int = 100) -> str:
  """The whole config help: the files with their variants, then the fields."""
  return describe_configs(width) + "\n\n" + describe_fields(width) + "\n"
