"""Every ```python snippet of README.md runs as written.

Each block is executed in process, in a fresh namespace, so the README's
examples cannot drift from the API. The snippets use the `lq` family at
CPU sizes (seconds each).
"""
import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / 'README.md'


def python_blocks(text):
  """(first line number, source) of every ```python fenced block."""
  blocks = []
  for match in re.finditer(r'^```python\n(.*?)^```', text, re.S | re.M):
    line = text.count('\n', 0, match.start()) + 2
    blocks.append((line, match.group(1)))
  return blocks


BLOCKS = python_blocks(README.read_text(encoding='utf-8'))


def test_readme_has_python_snippets():
  assert len(BLOCKS) >= 3


def test_python_blocks_finds_each_fenced_block():
  text = 'a\n```python\nx = 1\n```\nb\n```bash\nls\n```\n```python\ny = 2\n```\n'
  assert python_blocks(text) == [(3, 'x = 1\n'), (10, 'y = 2\n')]


@pytest.mark.parametrize('line,source', BLOCKS,
                         ids=[f'README.md:{line}' for line, _ in BLOCKS])
def test_readme_snippet_runs(line, source):
  code = compile(source, f'README.md:{line}', 'exec')
  exec(code, {'__name__': f'readme_snippet_{line}'})  # pylint: disable=exec-used
