// textured.pov -- distren test scene.
// Exercises: a local include in a subfolder (inc/shapes.inc) that itself
// includes another local file (inc/colors_local.inc), and an image-map
// texture read from a PNG in a subfolder (maps/checker.png).
// Every frame differs: the mapped cube spins and the ring moves with clock.

#version 3.7;

global_settings { assumed_gamma 1.0 }

#include "inc/shapes.inc"

camera {
  location <0, 3.5, -7>
  look_at  <0, 0.9, 0>
  angle 45
}

light_source { <-4, 8, -6> color rgb 1 }

background { color C_Sky }

plane {
  y, 0
  pigment { checker color C_Floor_A, color C_Floor_B }
}

// The image-mapped cube: rotates a quarter turn over the animation and
// rises slightly, so each frame shows the map at a different angle.
object {
  MappedBox("maps/checker.png")
  scale 0.75
  rotate <0, 90 * clock + 20, 0>
  translate <0, 1.0 + 0.4 * clock, 0>
}

// Ring orbiting around the cube.
object {
  Ring
  rotate x * 70
  rotate y * (360 * clock)
  translate <0, 1.2, 0>
}

// Pillars whose height tracks the clock.
#declare I = 0;
#while (I < 4)
  object {
    Pillar
    scale <1, 0.5 + 1.5 * clock, 1>
    translate <2.6, 0, 0>
    rotate y * (45 + 90 * I)
  }
  #declare I = I + 1;
#end
