"""A machine without Blender, on a machine that has it: ``distren serve --plugin noblender``
makes this server's Blender backend say it cannot run here, as it does where bpy is missing."""

from distren import backends

backends.get("blender").version = lambda: None
backends.available.cache_clear()
