"""ADE20K's 150 classes (SceneParsing ``objectInfo150``, as mmseg's ``ADE20KDataset`` names them) and the
colour palette mmseg draws them with, as data: one row per class, ``raw label  RGB hex  name``. Train id
``i`` (what the models predict) is raw label ``i + 1``; raw label 0 is "unlabelled".
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import numpy as np

__all__ = ["ADE20K_CLASSES", "ADE20K_PALETTE", "class_colours", "fallback_names"]

_TABLE = """
  1  787878  wall
  2  b47878  building
  3  06e6e6  sky
  4  503232  floor
  5  04c803  tree
  6  787850  ceiling
  7  8c8c8c  road
  8  cc05ff  bed
  9  e6e6e6  windowpane
 10  04fa07  grass
 11  e005ff  cabinet
 12  ebff07  sidewalk
 13  96053d  person
 14  787846  earth
 15  08ff33  door
 16  ff0652  table
 17  8fff8c  mountain
 18  ccff04  plant
 19  ff3307  curtain
 20  cc4603  chair
 21  0066c8  car
 22  3de6fa  water
 23  ff0633  painting
 24  0b66ff  sofa
 25  ff0747  shelf
 26  ff09e0  house
 27  0907e6  sea
 28  dcdcdc  mirror
 29  ff095c  rug
 30  7009ff  field
 31  08ffd6  armchair
 32  07ffe0  seat
 33  ffb806  fence
 34  0aff47  desk
 35  ff290a  rock
 36  07ffff  wardrobe
 37  e0ff08  lamp
 38  6608ff  bathtub
 39  ff3d06  railing
 40  ffc207  cushion
 41  ff7a08  base
 42  00ff14  box
 43  ff0829  column
 44  ff0599  signboard
 45  0633ff  chest of drawers
 46  eb0cff  counter
 47  a09614  sand
 48  00a3ff  sink
 49  8c8c8c  skyscraper
 50  fa0a0f  fireplace
 51  14ff00  refrigerator
 52  1fff00  grandstand
 53  ff1f00  path
 54  ffe000  stairs
 55  99ff00  runway
 56  0000ff  case
 57  ff4700  pool table
 58  00ebff  pillow
 59  00adff  screen door
 60  1f00ff  stairway
 61  0bc8c8  river
 62  ff5200  bridge
 63  00fff5  bookcase
 64  003dff  blind
 65  00ff70  coffee table
 66  00ff85  toilet
 67  ff0000  flower
 68  ffa300  book
 69  ff6600  hill
 70  c2ff00  bench
 71  008fff  countertop
 72  33ff00  stove
 73  0052ff  palm
 74  00ff29  kitchen island
 75  00ffad  computer
 76  0a00ff  swivel chair
 77  adff00  boat
 78  00ff99  bar
 79  ff5c00  arcade machine
 80  ff00ff  hovel
 81  ff00f5  bus
 82  ff0066  towel
 83  ffad00  light
 84  ff0014  truck
 85  ffb8b8  tower
 86  001fff  chandelier
 87  00ff3d  awning
 88  0047ff  streetlight
 89  ff00cc  booth
 90  00ffc2  television receiver
 91  00ff52  airplane
 92  000aff  dirt track
 93  0070ff  apparel
 94  3300ff  pole
 95  00c2ff  land
 96  007aff  bannister
 97  00ffa3  escalator
 98  ff9900  ottoman
 99  00ff0a  bottle
100  ff7000  buffet
101  8fff00  poster
102  5200ff  stage
103  a3ff00  van
104  ffeb00  ship
105  08b8aa  fountain
106  8500ff  conveyer belt
107  00ff5c  canopy
108  b800ff  washer
109  ff001f  plaything
110  00b8ff  swimming pool
111  00d6ff  stool
112  ff0070  barrel
113  5cff00  basket
114  00e0ff  waterfall
115  70e0ff  tent
116  46b8a0  bag
117  a300ff  minibike
118  9900ff  cradle
119  47ff00  oven
120  ff00a3  ball
121  ffcc00  food
122  ff008f  step
123  00ffeb  tank
124  85ff00  trade name
125  ff00eb  microwave
126  f500ff  pot
127  ff007a  animal
128  fff500  bicycle
129  0abed4  lake
130  d6ff00  dishwasher
131  00ccff  screen
132  1400ff  blanket
133  ffff00  sculpture
134  0099ff  hood
135  0029ff  sconce
136  00ffcc  vase
137  2900ff  traffic light
138  29ff00  tray
139  ad00ff  ashcan
140  00f5ff  fan
141  4700ff  pier
142  7a00ff  crt screen
143  00ffb8  plate
144  005cff  monitor
145  b8ff00  bulletin board
146  0085ff  shower
147  ffd600  radiator
148  19c2c2  glass
149  66ff00  clock
150  5c00ff  flag
"""

_ROWS = [line.split(None, 2) for line in _TABLE.strip().splitlines()]
#: Class names by train id (0..149).
ADE20K_CLASSES: Tuple[str, ...] = tuple(name for _, _, name in _ROWS)
#: ``[150, 3]`` uint8 RGB colours by train id.
ADE20K_PALETTE: np.ndarray = np.array([[int(h[i:i + 2], 16) for i in (0, 2, 4)] for _, h, _ in _ROWS], np.uint8)


def class_colours(num_classes: int) -> np.ndarray:
    """``[num_classes, 3]`` uint8 colours: ADE20K's palette, continued for more classes by a seeded draw."""
    if num_classes <= len(ADE20K_PALETTE):
        return ADE20K_PALETTE[:num_classes].copy()
    extra = np.random.default_rng(0).integers(0, 256, (num_classes - len(ADE20K_PALETTE), 3), dtype=np.uint8)
    return np.concatenate([ADE20K_PALETTE, extra])


def fallback_names(num_classes: int, names: Optional[Sequence[str]] = None) -> List[str]:
    """``names`` when there is one per class; else ADE20K's for 150 classes, else ``class k``."""
    if names is not None and len(names) == num_classes:
        return list(names)
    if num_classes == len(ADE20K_CLASSES):
        return list(ADE20K_CLASSES)
    return [f"class {k}" for k in range(num_classes)]
