camera { location <0, 0, -3> look_at 0 }
light_source { <2, 4, -6> rgb 1 }
background { rgb <0.1, 0.1, 0.2> }
#if (frame_number > 1)
  #declare Prev = concat("chain", str(frame_number - 1, 0, 0), ".png");
  box { <-1, -0.75, 0>, <1, 0.75, 0.01>
    pigment { image_map { png Prev once } translate <-0.5, -0.5, 0> scale <2, 1.5, 1> }
    finish { ambient 1 diffuse 0 }
    rotate <0, 0, 8> scale 0.9
  }
#end
sphere { <-1 + 2 * clock, 0.6, -0.5>, 0.25 pigment { rgb <1, 0.6 * clock, 0.2> } }
