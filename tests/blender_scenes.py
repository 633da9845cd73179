"""Tiny Blender scenes made by the tests through bpy, and Blender's own renders of them. Run as a
script with the venv's Python (``python blender_scenes.py COMMAND ...``): bpy stays out of
pytest's process.

* ``make FOLDER [PORT]`` writes FOLDER/anim.blend: a plane with an image texture (FOLDER/textures/
  checker.png, a relative path), a cube and a sphere, a camera that moves over 12 frames,
  32x24, Cycles, 2 samples, no denoising; FOLDER/hostile.blend: the same with a text block
  registered to run at load and a driver with a Python expression, which would write marker
  files in the current folder, open a socket to loopback port PORT and copy a host file (the
  secret.png beside FOLDER); FOLDER/hostfile.blend: the texture at that host file's absolute
  path; FOLDER/linked.blend and FOLDER/packed.blend (see :func:`linked_and_packed`). Prints a JSON line of Blender's frame names for a few
  output patterns (``frame_path``).
* ``own BLEND OUT [FRAME]`` renders the whole animation (or only FRAME) in one process, as
  ``blender -b BLEND -a`` (``-f FRAME``) does, into OUT/ (Blender's own renders, to compare with).
"""

from __future__ import annotations

import json
import os
import sys

import bpy

EVIL = '''
import os, socket
open("pwned-by-text.txt", "w").write("ran")
try:
    socket.create_connection(("127.0.0.1", {port}), 1)
    open("socket-opened.txt", "w").write("yes")
except OSError as e:
    open("socket-refused.txt", "w").write(str(e))
try:
    data = open({secret!r}, "rb").read()
    open("host-read.txt", "wb").write(data)
except OSError as e:
    open("host-refused.txt", "w").write(str(e))
'''


def build(folder: str, port: str = "9") -> None:
    from PIL import Image  # the venv has Pillow beside bpy

    os.makedirs(f"{folder}/textures", exist_ok=True)
    img = Image.new("RGB", (16, 16))
    img.putdata([(230, 40, 30) if (x // 4 + y // 4) % 2 else (20, 90, 220) for y in range(16) for x in range(16)])
    img.save(f"{folder}/textures/checker.png")

    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    scene.render.engine = "CYCLES"
    scene.cycles.samples = 2
    scene.cycles.use_denoising = False
    scene.cycles.seed = 7
    scene.render.resolution_x, scene.render.resolution_y, scene.render.resolution_percentage = 32, 24, 100
    scene.frame_start, scene.frame_end = 1, 12
    scene.render.filepath = "//render/frame_####"
    scene.render.image_settings.file_format = "PNG"
    scene.world = bpy.data.worlds.new("World")
    scene.world.color = (0.2, 0.2, 0.25)

    bpy.ops.mesh.primitive_plane_add(size=6)
    plane = bpy.context.object
    mat = bpy.data.materials.new("Checker")
    mat.use_nodes = True
    nodes = mat.node_tree.nodes
    tex = nodes.new("ShaderNodeTexImage")
    tex.image = bpy.data.images.load(f"{folder}/textures/checker.png")
    tex.image.filepath = "//textures/checker.png"
    tex.interpolation = "Closest"
    mat.node_tree.links.new(tex.outputs["Color"], nodes["Principled BSDF"].inputs["Base Color"])
    plane.data.materials.append(mat)
    bpy.ops.mesh.primitive_cube_add(size=1, location=(0, 0, 0.5))
    bpy.ops.mesh.primitive_uv_sphere_add(radius=0.6, location=(1.5, 1, 0.6))
    bpy.ops.object.light_add(type="SUN", location=(0, 0, 5))
    bpy.context.object.data.energy = 3
    bpy.ops.object.camera_add(location=(6, -6, 4), rotation=(1.1, 0, 0.785))
    cam = bpy.context.object
    scene.camera = cam
    cam.keyframe_insert("location", frame=1)
    cam.location = (4, -7, 3)
    cam.keyframe_insert("location", frame=12)
    bpy.ops.wm.save_as_mainfile(filepath=f"{folder}/anim.blend", relative_remap=True)

    # A stranger's file: Python that would run at load, and a Python driver.
    text = bpy.data.texts.new("evil.py")
    secret = os.path.join(os.path.dirname(os.path.abspath(folder)), "secret.png")
    text.write(EVIL.format(port=int(port), secret=secret))
    text.use_module = True
    fcurve = bpy.data.objects["Cube"].driver_add("location", 2)
    fcurve.driver.type = "SCRIPTED"
    fcurve.driver.expression = "__import__('os').system('touch pwned-by-driver.txt') or 0.5"
    bpy.ops.wm.save_as_mainfile(filepath=f"{folder}/hostile.blend", relative_remap=True)
    bpy.ops.wm.open_mainfile(filepath=f"{folder}/anim.blend", load_ui=False, use_scripts=False)

    # A file that names a host file by its absolute path.
    outside = os.path.join(os.path.dirname(os.path.abspath(folder)), "secret.png")
    Image.new("RGB", (16, 16), (0, 255, 0)).save(outside)
    bpy.data.images["checker.png"].filepath = outside
    bpy.ops.wm.save_as_mainfile(filepath=f"{folder}/hostfile.blend", relative_remap=False)

    names = {}
    r = bpy.context.scene.render
    for pattern in ("//render/frame_####", "//out/shot_##.png", "//x", "//a#b###c", "//f_####.jpg"):
        for fmt in ("PNG", "JPEG", "TARGA", "OPEN_EXR"):
            r.filepath, r.image_settings.file_format = pattern, fmt
            names[f"{pattern}|{fmt}"] = os.path.relpath(r.frame_path(frame=7), folder)
    print("names: " + json.dumps(names))
    linked_and_packed(folder)


def linked_and_packed(folder: str) -> None:
    """FOLDER/lib/props.blend: a cone with a texture of its own (FOLDER/textures/stripes.png,
    relative to the library); FOLDER/linked.blend: anim.blend with the cone linked from it;
    FOLDER/packed.blend: anim.blend with its texture packed into it."""
    from PIL import Image

    Image.new("RGB", (8, 8), (250, 200, 0)).save(f"{folder}/textures/stripes.png")
    bpy.ops.wm.read_factory_settings(use_empty=True)
    bpy.ops.mesh.primitive_cone_add(radius1=0.5, depth=1, location=(-1.5, 1, 0.5))
    cone = bpy.context.object
    cone.name = "Cone"
    mat = bpy.data.materials.new("Stripes")
    mat.use_nodes = True
    tex = mat.node_tree.nodes.new("ShaderNodeTexImage")
    tex.image = bpy.data.images.load(f"{folder}/textures/stripes.png")
    mat.node_tree.links.new(tex.outputs["Color"], mat.node_tree.nodes["Principled BSDF"].inputs["Base Color"])
    cone.data.materials.append(mat)
    os.makedirs(f"{folder}/lib", exist_ok=True)
    bpy.ops.wm.save_as_mainfile(filepath=f"{folder}/lib/props.blend", relative_remap=True)
    bpy.ops.wm.open_mainfile(filepath=f"{folder}/anim.blend", load_ui=False, use_scripts=False)
    with bpy.data.libraries.load(f"{folder}/lib/props.blend", link=True, relative=True) as (_, dst):
        dst.objects = ["Cone"]
    for ob in dst.objects:
        bpy.context.scene.collection.objects.link(ob)
    bpy.ops.wm.save_as_mainfile(filepath=f"{folder}/linked.blend", relative_remap=True)
    bpy.ops.wm.open_mainfile(filepath=f"{folder}/anim.blend", load_ui=False, use_scripts=False)
    bpy.ops.file.pack_all()
    bpy.ops.wm.save_as_mainfile(filepath=f"{folder}/packed.blend", relative_remap=True)


def own(blend: str, out: str, frame: str = "") -> None:
    bpy.ops.wm.open_mainfile(filepath=os.path.abspath(blend), load_ui=False, use_scripts=False)
    scene = bpy.context.scene
    scene.render.filepath = os.path.abspath(out) + "/frame_####"
    if frame:
        scene.frame_start = scene.frame_end = int(frame)
    bpy.ops.render.render(animation=True)


if __name__ == "__main__":
    {"make": build, "own": own}[sys.argv[1]](*sys.argv[2:])
