// TC strings made by the IAB Tech Lab's own encoder (@iabtechlabtcf/core, pinned in tag/package.json), as they are
// and as CMPs, servers and URLs damage them, each with what the IAB's decoder reads in it (or its refusal): the
// ground truth tests/test_consent_iab.py holds trackpoint's decoder to.
// Usage: node tests/iab/tcf_strings.cjs NODE_MODULES COUNT SEED  -> one JSON array on stdout.
"use strict";
const path = require("path");
const [modules, countArg, seedArg] = process.argv.slice(2);
const tcf = require(path.join(modules, "@iabtechlabtcf", "core"));
const { GVL, TCModel, TCString, PurposeRestriction, RestrictionType, Segment } = tcf;

const { random, pick, chance } = require("./seeded.cjs")(seedArg);
const subset = (ids, p) => ids.filter(() => chance(p));

// A vendor list of our own (no download): small ids, the ids around the widths that matter, and very large ones.
const LARGE = [755, 1000, 2047, 2048, 4095, 4096, 8191, 10000, 32767, 32768, 50000, 65534, 65535];
const vendorIds = [...new Set([...Array.from({ length: 300 }, (_, i) => i + 1), ...LARGE])];
const ALL_PURPOSES = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11];
const named = (ids) => Object.fromEntries(ids.map((id) => [id, { id, name: `n${id}`, description: "d", illustrations: [] }]));
const vendorList = {
  gvlSpecificationVersion: 3,
  vendorListVersion: 120,
  tcfPolicyVersion: 5,
  lastUpdated: "2025-01-01T00:00:00Z",
  purposes: named(ALL_PURPOSES),
  specialPurposes: named([1, 2, 3]),
  features: named([1, 2, 3]),
  specialFeatures: named([1, 2]),
  stacks: {},
  dataCategories: {},
  vendors: Object.fromEntries(
    vendorIds.map((id) => [
      id,
      {
        id,
        name: `vendor ${id}`,
        purposes: ALL_PURPOSES,
        legIntPurposes: [],
        flexiblePurposes: [2, 7, 8, 9, 10, 11],
        specialPurposes: [1, 2],
        features: [1, 2],
        specialFeatures: [1, 2],
        cookieMaxAgeSeconds: 86400,
        usesCookies: true,
        cookieRefresh: false,
        usesNonCookieAccess: false,
        dataRetention: { stdRetention: 30, purposes: {}, specialPurposes: {} },
        urls: [{ langId: "en", privacy: "https://v.example/p", legIntClaim: "https://v.example/l" }],
        dataDeclaration: [1],
      },
    ]),
  ),
};
const gvl = new GVL(vendorList);

const TYPES = [RestrictionType.NOT_ALLOWED, RestrictionType.REQUIRE_CONSENT, RestrictionType.REQUIRE_LI];

/** Vendor ids for one string: sparse, dense, blocks (ranges win), everything, nothing. */
const vendorsFor = () => {
  const shape = pick(["sparse", "dense", "blocks", "all", "none", "large"]);
  if (shape === "sparse") return subset(vendorIds, 0.03);
  if (shape === "dense") return subset(vendorIds, 0.7);
  if (shape === "all") return vendorIds.slice();
  if (shape === "none") return [];
  if (shape === "large") return [...subset(vendorIds.slice(0, 300), 0.1), ...subset(LARGE, 0.6)];
  const ids = [];
  for (let start = 1; start <= 300; start += 1 + Math.floor(random() * 40)) {
    const length = Math.floor(random() * 30);
    for (let id = start; id <= Math.min(300, start + length); id++) ids.push(id);
  }
  return ids;
};

const model = () => {
  const m = new TCModel(gvl);
  m.cmpId = 2 + Math.floor(random() * 4000);
  m.cmpVersion = Math.floor(random() * 4000);
  m.consentScreen = Math.floor(random() * 60);
  m.publisherCountryCode = pick(["DE", "FR", "GB", "IT", "US", "AA"]);
  m.isServiceSpecific = !chance(0.1);
  m.useNonStandardTexts = chance(0.1);
  m.purposeOneTreatment = chance(0.15);
  const purposeShape = pick(["all", "none", "some", "some", "all-but-one"]);
  let purposes =
    purposeShape === "all" ? ALL_PURPOSES : purposeShape === "none" ? [] : subset(ALL_PURPOSES, 0.6);
  if (purposeShape === "all-but-one") purposes = ALL_PURPOSES.filter((p) => p !== pick(ALL_PURPOSES));
  if (m.purposeOneTreatment) purposes = purposes.filter((p) => p !== 1); // purpose 1 was not asked
  m.purposeConsents.set(purposes);
  m.purposeLegitimateInterests.set(subset(ALL_PURPOSES, 0.5));
  m.specialFeatureOptins.set(subset([1, 2], 0.5));
  m.vendorConsents.set(vendorsFor());
  m.vendorLegitimateInterests.set(vendorsFor());
  if (chance(0.4)) {
    for (let n = 1 + Math.floor(random() * 4); n > 0; n--) {
      const restriction = new PurposeRestriction(pick(ALL_PURPOSES), pick(TYPES));
      const targets = chance(0.3) ? vendorIds : subset(vendorIds, 0.05 + random() * 0.3);
      for (const id of targets) m.publisherRestrictions.add(id, restriction);
    }
  }
  const publisherShape = pick(["all", "none", "some", "some"]);
  m.publisherConsents.set(
    publisherShape === "all" ? ALL_PURPOSES : publisherShape === "none" ? [] : subset(ALL_PURPOSES, 0.6),
  );
  m.publisherLegitimateInterests.set(subset(ALL_PURPOSES, 0.3));
  if (chance(0.3)) {  // custom purposes: bits of the publisher TC segment that come after its purposes
    m.numCustomPurposes = 1 + Math.floor(random() * 12);
    const custom = Array.from({ length: m.numCustomPurposes }, (_, i) => i + 1);
    m.publisherCustomConsents.set(subset(custom, 0.5));
    m.publisherCustomLegitimateInterests.set(subset(custom, 0.5));
  }
  return m;
};

/** What the IAB's decoder reads in a string, for the vendors asked about; null when it refuses the string. */
const meaning = (tc, probes) => {
  let decoded;
  try {
    decoded = TCString.decode(tc);
  } catch (e) {
    return { error: String(e && e.message) };
  }
  const vendors = {};
  for (const id of probes) {
    vendors[id] = {
      consent: decoded.vendorConsents.has(id),
      restrictions: decoded.publisherRestrictions.getRestrictions(id).map((r) => [r.purposeId, r.restrictionType]),
    };
  }
  const purposeConsents = [];
  decoded.purposeConsents.forEach((value, id) => value && purposeConsents.push(id));
  const publisherConsents = [];  // empty without a publisher TC segment
  decoded.publisherConsents.forEach((value, id) => value && publisherConsents.push(id));
  const publisherCustomConsents = [];
  decoded.publisherCustomConsents.forEach((value, id) => value && publisherCustomConsents.push(id));
  return { version: decoded.version, purposeConsents, publisherConsents, publisherCustomConsents, vendors };
};

const SEGMENTS = [
  [Segment.CORE],
  [Segment.CORE, Segment.VENDORS_DISCLOSED],
  [Segment.CORE, Segment.VENDORS_DISCLOSED, Segment.PUBLISHER_TC],
  [Segment.CORE, Segment.PUBLISHER_TC],
  [Segment.CORE, Segment.VENDORS_ALLOWED],
];

const cases = [];
const add = (tc, kind, probes, truthOf = tc) => cases.push({ tc, kind, meaning: meaning(truthOf, probes) });
for (let i = 0; i < Number(countArg); i++) {
  const m = model();
  const tc = TCString.encode(m, { segments: pick(SEGMENTS) });
  // Vendors asked about: with consent, without, restricted ones, large ids, the largest id, one not in the list.
  const consented = [];
  m.vendorConsents.forEach((value, id) => value && consented.push(id));
  const restricted = [];
  m.publisherRestrictions.getVendors().forEach((id) => restricted.push(id));
  const probes = [...new Set([
    ...(consented.length ? [pick(consented), pick(consented)] : []),
    ...(restricted.length ? [pick(restricted), pick(restricted)] : []),
    pick(vendorIds), pick(LARGE), 37, 65535, 65533, // 37: the tracker's vendor in the test's config
  ])];
  add(tc, "encoded", probes);
  // What strings look like after a CMP, a server or a URL got at them.
  const [core] = tc.split(".");
  if (i % 4 === 0) add(tc + "=".repeat((4 - (core.length % 4)) % 4 || 1), "padded", probes, tc);
  if (i % 4 === 1 && /[-_]/.test(tc)) add(tc.replace(/-/g, "+").replace(/_/g, "/"), "standard_base64", probes);
  if (i % 4 === 2 && /-/.test(tc)) add(tc.replace(/-/g, " "), "plus_as_space", probes);
  if (i % 8 === 3) add(tc + ".", "empty_segment", probes);
  if (i % 8 === 7) add(`${tc}.${pick(["g", "oA", "wAAA", "AAAA"])}`, "unknown_segment", probes);
  // A publisher TC segment cut short (its type, then fewer bits than its purposes take), and a second one after the
  // first (the IAB's decoder keeps the last).
  if (i % 8 === 5) add(`${core}.${pick(["Y", "YA", "dAAA", "YAAAAAAA"])}`, "short_publisher_segment", probes);
  const publisherSegment = tc.split(".").find((segment, at) => at > 0 && "YZabcdef".includes(segment[0])); // type 3
  if (i % 2 === 0 && publisherSegment && publisherSegment.length > 4) {  // cut within its custom purposes or before
    const cut = publisherSegment.slice(0, publisherSegment.length - 1 - Math.floor(random() * 3));
    add(tc.replace(publisherSegment, cut), "cut_publisher_segment", probes);
  }
  if (i % 8 === 6) {
    const other = model();
    const second = TCString.encode(other, { segments: [Segment.CORE, Segment.PUBLISHER_TC] }).split(".")[1];
    add(`${tc}.${second}`, "second_publisher_segment", probes);
  }
  if (i % 4 === 3) {
    const at = 1 + Math.floor(random() * (tc.length - 1));
    add(tc.slice(0, at) + pick(["!", "%", "*", " ", "~"]) + tc.slice(at), "junk_character", probes);
  }
  if (i % 3 === 0) {
    const at = 10 + Math.floor(random() * (core.length - 10));
    add(tc.slice(0, at), "truncated", probes);
  }
  if (i % 50 === 0) add(TCString.encode(m, { version: 1 }), "version_1", probes);
}
process.stdout.write(JSON.stringify(cases));
