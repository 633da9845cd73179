// distren demo scene: "the render federation".
// Five mirror spheres (the servers) orbit a glowing hub over a checkered
// floor, linked to it by thin rods; the camera sways gently. The animation
// is a seamless loop over clock 0..1 (Cyclic_Animation=on in demo.ini).
//
// Kept deliberately cheap: no radiosity, no media, max_trace_level 4.

#version 3.7;

global_settings {
  assumed_gamma 1.0
  max_trace_level 4
}

#declare T   = clock;          // 0 .. 1 (exclusive of 1 with cyclic animation)
#declare Tau = 2 * pi;

// ---------------------------------------------------------------- camera
#declare CamAngle  = 25 * sin(Tau * T) - 20;   // slow side-to-side sway
#declare CamHeight = 3.2 + 0.6 * cos(Tau * T);

camera {
  location <0, CamHeight, -8.5>
  look_at  <0, 0.9, 0>
  angle 50
  rotate y * CamAngle
}

// ---------------------------------------------------------------- lights
light_source { <-6, 12, -8>  color rgb <1.0, 0.96, 0.90> * 1.1 }
light_source { < 8,  6, -3>  color rgb <0.55, 0.65, 0.90> * 0.5 shadowless }

// ---------------------------------------------------------------- sky
sky_sphere {
  pigment {
    gradient y
    color_map {
      [0.00 color rgb <0.95, 0.75, 0.55>]
      [0.25 color rgb <0.35, 0.55, 0.85>]
      [1.00 color rgb <0.05, 0.12, 0.35>]
    }
  }
}

// ---------------------------------------------------------------- floor
plane {
  y, 0
  // The checker fades into a flat tone far away, which hides the
  // moire near the horizon without the cost of fog or media.
  pigment {
    cylindrical
    pigment_map {
      [0.00 color rgb <0.60, 0.60, 0.66>]
      [0.45 checker color rgb <0.92, 0.92, 0.88>, color rgb <0.08, 0.16, 0.30>
            scale 1.2 / 40]
    }
    scale 40
  }
  finish { diffuse 0.8 ambient 0.05 reflection { 0.12 } }
}

// ---------------------------------------------------------------- hub
#declare HubColor = rgb <1.0, 0.55, 0.10>;

union {
  cylinder { <0, 0, 0>, <0, 0.25, 0>, 1.1 }
  cylinder { <0, 0.25, 0>, <0, 0.9, 0>, 0.35 }
  pigment { color rgb <0.25, 0.27, 0.32> }
  finish { specular 0.5 roughness 0.02 reflection { 0.15 } }
}

sphere {
  <0, 1.45, 0>, 0.6
  pigment { color HubColor }
  finish { ambient 0.35 diffuse 0.7 specular 0.8 roughness 0.01 }
}

// A thin ring that wobbles around the hub.
torus {
  0.95, 0.05
  rotate x * (20 * sin(Tau * T))
  rotate y * (360 * T)
  translate <0, 1.45, 0>
  pigment { color rgb <1.0, 0.85, 0.4> }
  finish { specular 0.6 metallic reflection { 0.3 } }
}

// ---------------------------------------------------------------- orbiters
#declare N = 5;
#declare OrbitR = 3.0;
#declare Colors = array[5] {   // plain rgb vectors
  <0.90, 0.20, 0.20>,
  <0.20, 0.75, 0.30>,
  <0.20, 0.45, 0.95>,
  <0.95, 0.80, 0.15>,
  <0.75, 0.30, 0.90>
}

#declare I = 0;
#while (I < N)
  #declare Phase = I / N;
  #declare A = 360 * (T + Phase);                     // one full orbit per loop
  #declare H = 1.2 + 0.45 * sin(Tau * (2 * T + Phase)); // bob twice per loop
  #declare P = vrotate(<OrbitR, H, 0>, y * A);
  #declare R = 0.5 + 0.08 * I / (N - 1);

  sphere {
    P, R
    pigment { color rgb Colors[I] }
    finish {
      ambient 0.02 diffuse 0.35
      specular 0.9 roughness 0.005
      reflection { 0.25, 0.6 metallic }
    }
  }

  // link from the hub to the orbiter
  cylinder {
    <0, 1.45, 0>, P, 0.025
    pigment { color rgb 0.6 * Colors[I] + 0.4 }
    finish { ambient 0.3 }
    no_shadow
  }

  #declare I = I + 1;
#end
