"""POV-Ray INI files: Key=value lines, switch lines, frame ranges and output names."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from distren import povini
from distren.errors import DistrenError, SceneError
from distren.povini import IniOptions

FAST = settings(max_examples=150, deadline=None)
ANIMATIONS = Path("/usr/share/povray-3.7/scenes/animations")
POVRAY = "/usr/bin/povray"


def parse(text: str) -> IniOptions:
    return povini.parse(text, name="scene.ini")


# --- POV-Ray's own example INIs ----------------------------------------------------------------

# ini path: (input, first, last, cyclic) as the files say
EXAMPLES = {
    "ambient/ambient.ini": ("ambient.pov", 1, 20, False),
    "camera2/camera2.ini": ("camera2.pov", 1, 30, True),
    "clockd/clockd.ini": ("clockd.pov", 1, 20, True),
    "diffuse/diffuse.ini": ("diffuse.pov", 1, 26, False),
    "float1/float1.ini": ("float1.pov", 1, 51, False),
    "float2/float2.ini": ("float2.pov", 1, 51, False),
    "float3/float3.ini": ("float3.pov", 1, 51, False),
    "float4/float4.ini": ("float4.pov", 1, 51, False),
    "fractalzoom/fractalzoom.ini": ("fractalzoom.pov", 1, 60, True),
    "l_o/l_o.ini": ("l_o.pov", 1, 20, None),
    "quilted/plotqlt.ini": ("plotqlt.pov", 1, 10, True),
    "raddem/raddem.ini": ("raddem.pov", 1, 30, True),
    "reflection/reflection.ini": ("reflect.pov", 1, 10, True),  # sic: the sample names reflect.pov
    "speclr/speclr.ini": ("speclr.pov", 1, 10, True),
    "splinefollow/splinefollow.ini": ("splinefollow.pov", 1, 20, True),
    "vect1/vect1.ini": ("vect1.pov", 1, 60, True),
    "vect2/vect2.ini": ("vect2.pov", 1, 60, True),
}


def test_every_example_ini_is_covered():
    found = {p.relative_to(ANIMATIONS).as_posix() for p in ANIMATIONS.glob("*/*.ini")}
    assert found == set(EXAMPLES)


@pytest.mark.parametrize("rel", sorted(EXAMPLES))
def test_example_inis(rel):
    path = ANIMATIONS / rel
    opts = povini.parse(path.read_text(), name=rel)
    inp, first, last, cyclic = EXAMPLES[rel]
    assert opts.input == inp
    assert opts.frame_range() == list(range(first, last + 1))
    assert opts.cyclic is cyclic
    assert opts.animated
    assert opts.width is None and opts.height is None and opts.output is None
    assert opts.include_ini == [] and opts.library_path == []
    stem = inp.removesuffix(".pov")
    assert opts.output_name(first) == f"{stem}{first:0{len(str(last))}d}.png"
    assert opts.output_name(None) == f"{stem}.png"


def test_fractalzoom():
    opts = povini.parse((ANIMATIONS / "fractalzoom/fractalzoom.ini").read_text())
    assert opts.frame_range() == list(range(1, 61))
    assert (opts.initial_frame, opts.final_frame) == (1, 60)
    assert (opts.initial_clock, opts.final_clock) == (0.0, 1.0)
    assert opts.antialias is True
    assert opts.subset_start is None and opts.subset_end is None  # commented out in the file
    assert opts.output_name(3) == "fractalzoom03.png"
    assert opts.output_name(60) == "fractalzoom60.png"


def test_splinefollow_switch_line():
    opts = povini.parse((ANIMATIONS / "splinefollow/splinefollow.ini").read_text())
    # "+kf0.1666 +kff20 +kc declare=fp=0": final clock, final frame, cyclic; the declare is ignored
    assert opts.final_frame == 20
    assert opts.final_clock == pytest.approx(0.1666)
    assert opts.initial_frame is None and opts.initial_clock is None
    assert opts.cyclic is True
    assert opts.frame_range() == list(range(1, 21))
    assert opts.output_name(3) == "splinefollow03.png"


def test_povray_writes_the_predicted_file_for_splinefollow(tmp_path):
    scene = tmp_path / "splinefollow"
    shutil.copytree(ANIMATIONS / "splinefollow", scene)
    opts = povini.parse((scene / "splinefollow.ini").read_text())
    before = set(p.name for p in scene.iterdir())
    proc = subprocess.run(
        [POVRAY, "splinefollow.ini", "+W32", "+H24", "+SF3", "+EF3", "-D"],
        cwd=scene, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    written = set(p.name for p in scene.iterdir()) - before
    assert written == {opts.output_name(3)} == {"splinefollow03.png"}
    assert (scene / "splinefollow03.png").read_bytes().startswith(b"\x89PNG")


# Measured POV-Ray behaviour, checked against the real renderer on a tiny scene: the files
# ``povray THIS.ini`` writes are exactly {output_name(f) for f in frame_range()}.
TINY_SCENE = "camera{location <0,0,-3> look_at 0} sphere{0,1 pigment{rgb clock}} light_source{<0,5,-5> rgb 1}\n"


POVRAY_CASES = [
    ("Input_File_Name=s.pov\n", ["s.png"]),  # a still
    ("Input_File_Name=s.pov\nFinal_Frame=1\n", ["s1.png"]),
    ("Input_File_Name=s.pov\nInitial_Frame=3\n", ["s3.png"]),
    ("Input_File_Name=s.pov\nFinal_Frame=12\nSubset_Start_Frame=2\nSubset_End_Frame=3\n", ["s02.png", "s03.png"]),
    ("Input_File_Name=s.pov\n+KFF1000 +SF7 +EF7\n", ["s0007.png"]),
    ("Input_File_Name=s.pov\n+KFI8 +KFF12 +SF9 +EF9\n", ["s09.png"]),
    ("Input_File_Name=s.pov\nOutput_File_Name=foo.tga\nFinal_Frame=3\n+SF2 +EF2\n", ["foo.tga2.png"]),
    ("Input_File_Name=s.pov\nOutput_File_Name=foo.tga\nOutput_File_Type=T\nFinal_Frame=2\n", ["foo1.tga", "foo2.tga"]),
    ("Input_File_Name=s.pov\nOutput_File_Name=out/\n+KFF2\n", ["out/s1.png", "out/s2.png"]),
    ("Input_File_Name=s.pov\n+Oout/bar.png +KFF3 +SF3\n", ["out/bar3.png"]),
    ("+Is.x.pov +FP\n", ["s.x.ppm"]),
    ("Input_File_Name=s.pov\nFinal_Frame=4\n[other]\nFinal_Frame=9\n", ["s1.png", "s2.png", "s3.png", "s4.png"]),
]


@pytest.fixture(scope="module")
def povray_runs(tmp_path_factory):
    """Render every case with the real POV-Ray, all at once (each run idles ~0.6 s at start-up).
    Returns, per case, the files it wrote."""
    procs = []
    for i, (ini, _) in enumerate(POVRAY_CASES):
        d = tmp_path_factory.mktemp(f"pov{i}")
        (d / "s.pov").write_text(TINY_SCENE)
        (d / "s.x.pov").write_text(TINY_SCENE)
        (d / "out").mkdir()
        (d / "t.ini").write_text(ini)
        cmd = [POVRAY, "t.ini", "+W8", "+H6", "-D", "-GA"]
        procs.append((d, subprocess.Popen(cmd, cwd=d, stdout=subprocess.PIPE, stderr=subprocess.PIPE)))
    results = []
    for d, proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode(errors="replace")[-2000:]
        written = sorted(
            p.relative_to(d).as_posix() for p in d.rglob("*") if p.is_file() and p.suffix not in (".pov", ".ini")
        )
        results.append(written)
    return results


@pytest.mark.parametrize("case", range(len(POVRAY_CASES)))
def test_povray_writes_what_frame_range_and_output_name_predict(povray_runs, case):
    ini, expected = POVRAY_CASES[case]
    opts = povini.parse(ini, name="t.ini")
    predicted = [opts.output_name(f) for f in opts.frame_range()] or [opts.output_name(None)]
    assert predicted == expected
    assert povray_runs[case] == sorted(expected)


# --- Key=value lines ---------------------------------------------------------------------------


def test_key_value_lines():
    opts = parse(
        "Input_File_Name=scene.pov\n"
        "Output_File_Name=frames/anim\n"
        "Width=640\nHeight=480\n"
        "Initial_Frame=5\nFinal_Frame=9\n"
        "Initial_Clock=0.5\nFinal_Clock=2\n"
        "Subset_Start_Frame=6\nSubset_End_Frame=8\n"
        "Cyclic_Animation=yes\nOutput_File_Type=T\n"
        "Antialias=off\nRender_Block_Size=16\n"
        "Library_Path=/a\nLibrary_Path=/b\n"
        "Include_INI=more.ini\n"
        "Pause_when_Done=off\nTest_Abort_Count=100\nDeclare=fp=0\n"
    )
    assert opts == IniOptions(
        input="scene.pov", output="frames/anim", width=640, height=480,
        initial_frame=5, final_frame=9, initial_clock=0.5, final_clock=2.0,
        subset_start=6, subset_end=8, cyclic=True, file_type="T", antialias=False, block_size=16,
        library_path=["/a", "/b"], include_ini=["more.ini"],
    )
    assert opts.frame_range() == [6, 7, 8]
    assert opts.output_name(7) == "frames/anim7.tga"


def test_keys_are_case_insensitive_and_spaces_around_equals_are_allowed():
    opts = parse("FINAL_FRAME = 12\n  input_file_name =  a.pov  \nwidth=\t33\n")
    assert (opts.final_frame, opts.input, opts.width) == (12, "a.pov", 33)


def test_later_lines_win():
    opts = parse("Width=10\nWidth=20\n+W30\n")
    assert opts.width == 30
    assert parse("+W30\nWidth=20\n").width == 20


@pytest.mark.parametrize(
    "value, expected",
    [("on", True), ("On", True), ("true", True), ("yes", True), ("1", True), ("", True),
     ("off", False), ("OFF", False), ("false", False), ("no", False), ("0", False)],
)
def test_boolean_values(value, expected):
    assert parse(f"Cyclic_Animation={value}\n").cyclic is expected


def test_integral_float_values_are_accepted_for_ints():
    opts = parse("Final_Frame=20.0\nWidth=+64\nInitial_Frame=-2\n")
    assert (opts.final_frame, opts.width, opts.initial_frame) == (20, 64, -2)


# --- comments, quotes, sections, line endings --------------------------------------------------


def test_comments():
    opts = parse(
        "; a comment line\n"
        ";Final_Frame=99\n"
        "Final_Frame=10 ; trailing comment\n"
        "Width=100;no space before the comment\n"
        "   ; indented comment\n"
        "Input_File_Name=\"semi;colon.pov\" ; the ; inside quotes is kept\n"
    )
    assert opts.final_frame == 10
    assert opts.width == 100
    assert opts.input == "semi;colon.pov"


def test_quoted_values():
    opts = parse(
        'Input_File_Name="my scene.pov"\n'
        "Output_File_Name='out dir/frame'\n"
        'Library_Path="/usr/share/povray 3.7/include"\n'
    )
    assert opts.input == "my scene.pov"
    assert opts.output == "out dir/frame"
    assert opts.library_path == ["/usr/share/povray 3.7/include"]
    assert opts.output_name(None) == "out dir/frame.png"


def test_lines_after_the_first_section_are_ignored():
    opts = parse(
        "Input_File_Name=a.pov\nFinal_Frame=4\n"
        "[low]\nWidth=160\nFinal_Frame=100\n"
        "[high]\nWidth=1600\n"
    )
    assert opts.width is None
    assert opts.frame_range() == [1, 2, 3, 4]


def test_section_on_the_first_line_means_nothing_counts():
    assert parse("[only]\nFinal_Frame=4\nWidth=5\n") == IniOptions()


def test_windows_line_endings_and_blank_lines():
    opts = parse("Input_File_Name=a.pov\r\n\r\n\r\nFinal_Frame=3\r\n+W8 +H6\r\n")
    assert (opts.input, opts.final_frame, opts.width, opts.height) == ("a.pov", 3, 8, 6)


def test_bare_file_name_line_includes_another_ini():
    opts = parse("common.ini\n\"other.ini\"\nFinal_Frame=2\n")
    assert opts.include_ini == ["common.ini", "other.ini"]
    assert opts.final_frame == 2


def test_parse_into_existing_options_accumulates():
    first = parse("Library_Path=/a\nWidth=10\n")
    both = povini.parse("Library_Path=/b\nHeight=20\n", opts=first)
    assert both is first
    assert both.library_path == ["/a", "/b"]
    assert (both.width, both.height) == (10, 20)


# --- switch lines ------------------------------------------------------------------------------


def test_width_height_switches():
    opts = parse("+W320 +H240\n")
    assert (opts.width, opts.height) == (320, 240)


@pytest.mark.parametrize("switch", ["+WT2", "+wt8", "-WL2", "+HI", "+HTx", "+W", "+H"])
def test_other_w_and_h_switches_do_not_set_the_resolution(switch):
    opts = parse(f"Width=100\nHeight=50\n{switch}\n")
    assert (opts.width, opts.height) == (100, 50)


def test_threads_switch_next_to_width():
    opts = parse("+WT2 +W64 +WT4 +H48\n")
    assert (opts.width, opts.height) == (64, 48)


def test_animation_switches():
    opts = parse("+KFI2 +KFF30 +KI0.25 +KF0.75 +KC\n")
    assert (opts.initial_frame, opts.final_frame) == (2, 30)
    assert (opts.initial_clock, opts.final_clock) == (0.25, 0.75)
    assert opts.cyclic is True
    assert parse("+KC\n-KC\n").cyclic is False


def test_final_clock_switch_is_not_final_frame():
    opts = parse("+kf0.1666\n")
    assert opts.final_clock == pytest.approx(0.1666)
    assert opts.final_frame is None and not opts.animated


def test_subset_switches():
    opts = parse("Initial_Frame=1\nFinal_Frame=60\n+SF11 +EF30\n")
    assert (opts.subset_start, opts.subset_end) == (11, 30)
    assert opts.frame_range() == list(range(11, 31))
    assert opts.output_name(11) == "object11.png"


def test_input_output_library_and_type_switches():
    opts = parse('+Iscene.pov +Orender/ +L/inc +L"/my inc" +FT -D +P +V\n')
    assert opts.input == "scene.pov"
    assert opts.output == "render/"
    assert opts.library_path == ["/inc", "/my inc"]
    assert opts.file_type == "T"
    assert opts.output_name(None) == "render/scene.tga"


def test_key_value_tokens_on_a_switch_line():
    opts = parse("+W10 Height=20 declare=fp=0 Final_Frame=4\n")
    assert (opts.width, opts.height, opts.final_frame) == (10, 20, 4)


@pytest.mark.parametrize(
    "line, expected",
    [("+A", True), ("-A", False), ("+A0.3", True), ("-A0.3", False), ("+a", True)],
)
def test_antialias_switches(line, expected):
    assert parse(line + "\n").antialias is expected


@pytest.mark.parametrize("line", ["+AM2", "+AJ", "+AG2.2", "-AM1"])
def test_other_a_switches_leave_antialias_alone(line):
    assert parse(line + "\n").antialias is None
    assert parse(f"Antialias=off\n{line}\n").antialias is False


@pytest.mark.parametrize("fmt, ext", [("N", ".png"), ("T", ".tga"), ("C", ".tga"), ("P", ".ppm"),
                                      ("E", ".exr"), ("H", ".hdr"), ("J", ".jpg"), ("B", ".bmp")])
def test_output_extensions(fmt, ext):
    opts = parse(f"+Ia.pov +F{fmt} +KFF10\n")
    assert opts.output_name(4) == f"a04{ext}"
    assert parse(f"Input_File_Name=a.pov\nOutput_File_Type={fmt.lower()}\n").output_name(None) == f"a{ext}"


# --- frame ranges and output names -------------------------------------------------------------


def test_still_image():
    opts = parse("Input_File_Name=scene.pov\nWidth=10\n")
    assert not opts.animated
    assert opts.frame_range() == []
    assert opts.output_name(None) == "scene.png"
    opts = parse("Input_File_Name=scene.pov\nInitial_Clock=0\nFinal_Clock=1\n")
    assert opts.frame_range() == []
    assert opts.output_name(None) == "scene.png"
    assert opts.output_name(5) == "scene.png"  # a still has no frame number


def test_default_input_is_object_pov():
    assert IniOptions().output_name(None) == "object.png"


def test_only_final_frame_one():
    opts = parse("Input_File_Name=name.pov\nFinal_Frame=1\n")
    assert opts.frame_range() == [1]
    assert opts.output_name(1) == "name1.png"


def test_only_initial_frame():
    opts = parse("Input_File_Name=name.pov\nInitial_Frame=3\n")
    assert opts.frame_range() == [3]
    assert opts.output_name(3) == "name3.png"


@pytest.mark.parametrize(
    "final, frame, expected",
    [(9, 1, "s1.png"), (10, 1, "s01.png"), (99, 7, "s07.png"), (100, 7, "s007.png"), (1000, 7, "s0007.png"),
     (60, 60, "s60.png")],
)
def test_output_names_are_padded_to_the_digits_of_final_frame(final, frame, expected):
    opts = parse(f"Input_File_Name=s.pov\nFinal_Frame={final}\n")
    assert opts.output_name(frame) == expected


@pytest.mark.parametrize(
    "output, expected",
    [
        ("foo", "foo2.png"),
        ("foo.png", "foo2.png"),
        ("foo.tga", "foo.tga2.png"),  # measured: only the type's own extension is replaced
        ("foo.PNG", "foo.PNG2.png"),
        ("foo.bar.png", "foo.bar2.png"),
        ("dir/", "dir/s2.png"),
        ("dir/bar.png", "dir/bar2.png"),
        ("dir.d/bar", "dir.d/bar2.png"),
    ],
)
def test_output_file_name_forms(output, expected):
    opts = parse(f"Input_File_Name=s.pov\nOutput_File_Name={output}\nFinal_Frame=3\n")
    assert opts.output_name(2) == expected


def test_subset_outside_the_range_is_clamped_or_empty():
    assert parse("Initial_Frame=1\nFinal_Frame=10\nSubset_Start_Frame=8\nSubset_End_Frame=50\n").frame_range() == [8, 9, 10]
    assert parse("Initial_Frame=5\nFinal_Frame=10\nSubset_Start_Frame=1\nSubset_End_Frame=6\n").frame_range() == [5, 6]
    assert parse("Initial_Frame=1\nFinal_Frame=10\nSubset_Start_Frame=20\n").frame_range() == []
    assert parse("Final_Frame=10\nSubset_End_Frame=0\n").frame_range() == []


@FAST
@given(
    st.integers(-50, 500) | st.none(),
    st.integers(-50, 500) | st.none(),
    st.integers(-60, 600) | st.none(),
    st.integers(-60, 600) | st.none(),
)
def test_key_value_and_switch_forms_agree(first, last, sub_lo, sub_hi):
    sub_lo = None if sub_lo is not None and 0 < sub_lo < 1 else sub_lo
    lines, switches = ["Input_File_Name=s.pov"], ["+Is.pov"]
    for key, sw, v in [("Initial_Frame", "KFI", first), ("Final_Frame", "KFF", last),
                       ("Subset_Start_Frame", "SF", sub_lo), ("Subset_End_Frame", "EF", sub_hi)]:
        if v is not None:
            lines.append(f"{key}={v}")
            switches.append(f"+{sw}{v}")
    a = parse("\n".join(lines))
    b = parse(" ".join(switches))
    assert a == b
    frames = a.frame_range()
    if first is None and last is None:
        assert frames == [] and a.output_name(None) == "s.png"
        return
    lo = 1 if first is None else first
    hi = max(lo, 1 if last is None else last)
    # contiguous, inside the animation, inside the subset
    if frames:
        assert frames == list(range(frames[0], frames[-1] + 1))
    assert all(lo <= f <= hi for f in frames)
    assert all((sub_lo is None or f >= sub_lo) and (sub_hi is None or f <= sub_hi) for f in frames)
    if sub_lo is None and sub_hi is None:
        assert frames == list(range(lo, hi + 1))
    # every frame gets its own name, all padded to the same width when frames are non-negative
    names = [a.output_name(f) for f in frames]
    assert len(set(names)) == len(names)
    if frames and frames[0] >= 0:
        assert len({len(n) for n in names}) == 1
        assert all(n.startswith("s") and n.endswith(".png") and int(n[1:-4]) == f for n, f in zip(names, frames))


# --- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, needles",
    [
        ("Width=abc\n", ["scene.ini, line 1", "Width='abc' is not a valid int"]),
        ("; c\n\nFinal_Frame=1.5\n", ["scene.ini, line 3", "Final_Frame='1.5' is not a valid int"]),
        ("Final_Clock=soon\n", ["line 1", "Final_Clock='soon' is not a valid float"]),
        ("Cyclic_Animation=maybe\n", ["line 1", "Cyclic_Animation='maybe' is not a valid bool"]),
        ("Subset_Start_Frame=0.5\n", ["line 1", "fractional subset '0.5' is not supported"]),
        ("+SF0.25 +EF0.75\n", ["line 1", "fractional subset '0.25'"]),
        ("Initial_Frame=1\n+KFF1.2.3\n", ["line 2", "+KFF1.2.3='1.2.3' is not a valid int"]),
        ("+W10 +I\"unterminated\n", ["line 1", "cannot split switches"]),
    ],
)
def test_errors_name_the_file_line_and_key(text, needles):
    with pytest.raises(SceneError) as ei:
        povini.parse(text, name="scene.ini")
    assert isinstance(ei.value, DistrenError)
    for needle in needles:
        assert needle in str(ei.value)


@FAST
@given(st.text(alphabet="+-=;[]\"' \nWHIKFSEOCALw0123456789.abc_", max_size=80))
@example("'' 0")  # an empty quoted word among switches was an IndexError
def test_parse_raises_only_scene_error(text):
    try:
        opts = povini.parse(text)
    except SceneError:
        return
    opts.frame_range()
    opts.output_name(None)
