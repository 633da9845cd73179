"""names.plain: the one check of names from job settings that become paths or arguments."""

from __future__ import annotations

import posixpath
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from distren import names
from distren.errors import JobFileError


@pytest.mark.parametrize("name", ["anim01.png", "frames/anim01.png", "s.tile0.png", "a_b-c+d=e,f#g~h(1).png",
                                  "Ünïcødé.png", "_x.mp4", "out/sub/movie.mp4", "x" * 255])
def test_ordinary_names_pass(name):
    assert names.plain(name, "movie frame/1 output") == name


@pytest.mark.parametrize("name,why", [
    ("file:/tmp/x.mp4", "URL"), ("http://h/x", "URL"), ("pipe:1", "URL"), ("concat:a|b", "URL"),
    ("/etc/passwd", "absolute"), ("../x", "'..'"), ("a/../../x", "'..'"), ("-y", "'-'"), ("+Ix", "'+'"),
    ("a'b", "quote"), ('a"b', "quote"), ("a`b", "quote"), ("a\nb", "control"), ("a\x00b", "control"),
    ("a\u202eb", "control"), ("a b", "' '"), ("a\\b", "'\\\\'"), ("a|b", "'|'"), ("a;b", "';'"),
    ("a@b", "'@'"), ("%d.png", "'%'"), ("a$b", "'$'"), ("./a", "'.' component"), ("a//b", "empty"),
    ("a/", "empty"), ("", "empty"), (".hidden", "does not start"), ("x/.y", "does not start"),
    ("x" * 256, "longer than 255"), ("a/" * 600 + "b", "longer than 1024"),
])
def test_hostile_names_are_refused_naming_the_field(name, why):
    with pytest.raises(JobFileError) as e:
        names.plain(name, "movie frame/1 output")
    assert str(e.value).startswith(f"distrenjob.xml: movie frame/1 output={name!r} ")
    assert why in str(e.value)


@settings(max_examples=500, deadline=None)
@given(st.text(min_size=0, max_size=80))
def test_whatever_passes_stays_inside_and_is_no_option_or_url(text):
    try:
        name = names.plain(text, "f")
    except JobFileError:
        return
    assert not name.startswith(("/", "-", "+", "."))
    assert posixpath.normpath(name) == name and not name.startswith("..")
    assert not re.match(r"[A-Za-z][A-Za-z0-9+.-]*:", name) and ":" not in name
    assert not any(c in name for c in "'\"`\\ \t\r\n\x00%|;@$")
    assert all(part and part[0] not in ".-+" for part in name.split("/"))


@pytest.mark.parametrize("value", ["24", "12.5", "240", "0.5"])
def test_plain_numbers(value):
    assert names.number(value, "fps", 0, 240, "frames per second") == float(value)


@pytest.mark.parametrize("value", ["0", "241", "1e2", "nan", "inf", " 24", "24 ", "+24", "-1", "0x10", "2_4", ""])
def test_numbers_that_are_not_plain(value):
    with pytest.raises(JobFileError, match="fps="):
        names.number(value, "fps", 0, 240, "frames per second")


@pytest.mark.parametrize("value", ["0,0,32,24 ", " 0,0,32,24", "0,0,3_2,24", "0,0,+32,24", "0,0,32", "a,b,c,d",
                                   "0,0,32,24,1", "-1,0,32,24", "0,0,999999,24"])
def test_regions_that_are_not_plain(value):
    with pytest.raises(JobFileError, match="expected x0,y0,x1,y1"):
        names.region(value, "tile frame/0 region")
