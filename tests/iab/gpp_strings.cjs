// GPP strings made by the IAB Tech Lab's own library (@iabgpp/cmpapi, pinned in tag/package.json): US national and
// state sections with their opt-outs and GPC subsection, US Privacy and TCF EU sections, in any combination, with a
// gpp_sid or without; then what the library reads back in each. tests/test_consent_iab.py holds trackpoint's
// decisions to it.
// Usage: node tests/iab/gpp_strings.cjs NODE_MODULES COUNT SEED  -> {sections, cases} as JSON on stdout.
"use strict";
const path = require("path");
const [modules, countArg, seedArg] = process.argv.slice(2);
const { GppModel, Sections } = require(path.join(modules, "@iabgpp", "cmpapi"));

const { pick, chance } = require("./seeded.cjs")(seedArg);

const OPT_OUTS = ["SaleOptOut", "SharingOptOut", "TargetedAdvertisingOptOut"];
const idOf = (name) => [...Sections.SECTION_ID_NAME_MAP].find(([, known]) => known === name)[0];
const has = (name, field) => {
  try {
    new GppModel().setFieldValue(name, field, new GppModel().getFieldValue(name, field));
    return true;
  } catch (e) {
    return false;
  }
};
// Every US section the library knows (not the US Privacy one), with the opt-outs it has: trackpoint must know them.
const us = Sections.SECTION_ORDER.filter((name) => name.startsWith("us") && name !== "uspv1").map((name) => ({
  name,
  id: idOf(name),
  optOuts: OPT_OUTS.filter((field) => has(name, field)),
  gpc: has(name, "Gpc"),
}));

const cases = [];
for (let i = 0; i < Number(countArg); i++) {
  const model = new GppModel();
  const chosen = us.filter(() => chance(0.12));
  if (!chosen.length) chosen.push(pick(us));
  for (const section of chosen) {
    for (const field of section.optOuts) model.setFieldValue(section.name, field, pick([0, 1, 2, 2, 2]));
    if (section.gpc && chance(0.3)) model.setFieldValue(section.name, "Gpc", chance(0.5));
  }
  if (chance(0.2)) {
    model.setFieldValue("uspv1", "Notice", "Y");
    model.setFieldValue("uspv1", "OptOutSale", pick(["Y", "N", "-"]));
    model.setFieldValue("uspv1", "LspaCovered", "N");
  }
  if (chance(0.2)) {
    model.setFieldValue("tcfeuv2", "CmpId", 300);
    model.setFieldValue("tcfeuv2", "PurposeConsents", [chance(0.5), true, chance(0.5)]);
  }
  const gpp = model.encode();
  const ids = model.getSectionIds();
  const sid = pick([null, "all", "one", "some", "none"]);
  const applicable =
    sid === null || sid === "all" ? ids : sid === "one" ? [pick(ids)] : sid === "none" ? [] : ids.filter((id, i) => i === 0 || chance(0.5));
  const gppSid =
    sid === null ? null : sid === "none" ? "-1" : applicable.join(chance(0.2) ? "_" : ",");
  // What the library reads back, section by section.
  const back = new GppModel(gpp);
  const read = {};
  for (const id of ids) {
    const name = Sections.SECTION_ID_NAME_MAP.get(id);
    const section = us.find((s) => s.name === name);
    if (section) {
      read[id] = {
        optOuts: section.optOuts.map((field) => back.getFieldValue(name, field)),
        gpc: section.gpc && back.getFieldValue(name, "GpcSegmentIncluded") ? back.getFieldValue(name, "Gpc") : false,
      };
    } else if (name === "uspv1") read[id] = { usp: back.getFieldValue(name, "OptOutSale") };
    else if (name === "tcfeuv2") read[id] = { purpose1: back.getFieldValue(name, "PurposeConsents")[0] === true };
  }
  cases.push({ gpp, gppSid, applicable: gppSid === null ? ids : applicable, read });
}
// Damaged: what the library refuses to read is refused (gpp_invalid).
const damaged = [];
for (const { gpp } of cases.slice(0, 40)) {
  const [header, ...rest] = gpp.split("~");
  for (const bad of [
    gpp.replace("~", "~~"), // a section more than the header lists
    [header, ...rest.slice(1)].join("~") || header + "~", // one fewer
    gpp.replace(/^D/, "C"), // not a GPP header (type 2)
    `${header.slice(0, 2)}!${header.slice(2)}~${rest.join("~")}`, // junk in the header
  ]) {
    let refused = false;
    try {
      const model = new GppModel(bad);
      for (const id of model.getSectionIds()) model.getSection(Sections.SECTION_ID_NAME_MAP.get(id));
      if (model.getSectionIds().length !== bad.split("~").length - 1) refused = true;
    } catch (e) {
      refused = true;
    }
    if (refused) damaged.push(bad);
  }
}
process.stdout.write(JSON.stringify({ sections: us, cases, damaged }));
