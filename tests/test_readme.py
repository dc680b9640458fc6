"""Every ```python snippet of README.md and of the pages in docs/ runs as
written and asserts what it computes.

Each block is executed in process, in a fresh namespace, so the
documentation's examples cannot drift from the API. The snippets use the
`lq` family at CPU sizes (seconds each).
"""
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / 'README.md'
PAGES = [README] + sorted((ROOT / 'docs').glob('*.md'))


def python_blocks(text):
  """(first line number, source) of every ```python fenced block."""
  blocks = []
  for match in re.finditer(r'^```python\n(.*?)^```', text, re.S | re.M):
    line = text.count('\n', 0, match.start()) + 2
    blocks.append((line, match.group(1)))
  return blocks


BLOCKS = [(page.relative_to(ROOT).as_posix(), line, source)
          for page in PAGES
          for line, source in python_blocks(page.read_text(encoding='utf-8'))]


def test_readme_has_python_snippet():
  assert any(name == 'README.md' for name, _, _ in BLOCKS)


def test_docs_have_python_snippets():
  assert len([name for name, _, _ in BLOCKS if name.startswith('docs/')]) >= 3


def test_python_blocks_finds_each_fenced_block():
  text = 'a\n```python\nx = 1\n```\nb\n```bash\nls\n```\n```python\ny = 2\n```\n'
  assert python_blocks(text) == [(3, 'x = 1\n'), (10, 'y = 2\n')]


@pytest.mark.parametrize('name,line,source', BLOCKS,
                         ids=[f'{name}:{line}' for name, line, _ in BLOCKS])
def test_snippet_runs_and_computes_what_it_says(name, line, source):
  """Each snippet runs and checks what it computes with its own asserts
  (shapes, the values it sets, finite results), so a snippet that runs but
  computes something else fails."""
  assert re.search(r'^assert ', source, re.M), (
      f'{name}:{line}: the snippet asserts nothing about what it computes')
  code = compile(source, f'{name}:{line}', 'exec')
  exec(code, {'__name__': f'doc_snippet_{line}'})  # pylint: disable=exec-used
