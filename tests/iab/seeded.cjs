// A seeded random source for the IAB case generators (mulberry32): the same cases for the same seed.
"use strict";
module.exports = (seedArg) => {
  let seed = Number(seedArg) >>> 0;
  const random = () => {
    seed = (seed + 0x6d2b79f5) >>> 0;
    let t = seed;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  return { random, pick: (list) => list[Math.floor(random() * list.length)], chance: (p) => random() < p };
};
