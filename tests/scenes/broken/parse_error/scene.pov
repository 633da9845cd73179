// Broken on purpose: line 14 uses an identifier that was never declared.
#version 3.7;
global_settings { assumed_gamma 1.0 }

camera { location <0, 1, -4> look_at <0, 0.5, 0> }
light_source { <2, 4, -3> color rgb 1 }

sphere {
  <0, 0.5, 0>, 0.5
  pigment { color rgb <1, 0, 0> }
}

sphere {
  <0, 0.5, 0>, Undeclared_Radius
  pigment { color rgb <0, 0, 1> }
}
