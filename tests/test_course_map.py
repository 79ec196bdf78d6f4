"""The course map: every section it names exists, and the README shows exactly the map `course list` prints."""
from course_utils.cli import main
from course_utils.course_map import COURSE_MAP, course_map_markdown, course_map_text, map_problems
from notebook_runner import NBS, ROOT


def test_every_notebook_and_section_in_the_map_exists():
    assert map_problems(NBS / 'lessons') == []
    assert [lesson.number for lesson in COURSE_MAP] == [1, 2, 3, 4, 5, 6]


def test_readme_shows_the_map():
    assert course_map_markdown() in (ROOT / 'README.md').read_text(encoding='utf-8')


def test_course_list_prints_the_map(capsys):
    assert main(['list']) == 0
    out = capsys.readouterr().out
    assert course_map_text() in out and '03_ethics' in out
