#!/usr/bin/env node
// Golden Merkle vectors from OpenZeppelin's own `@openzeppelin/merkle-tree` (pinned in
// package.json), for fedlearn's contribution leaves.
//
//   node contracts/tools/merkle_vectors.mjs [OUT]      (default: tests/data/merkle_vectors.json)
//
// For several fixed leaf sets (1, 2, 3, 7 and 16 leaves, leaves that differ in one field by the
// smallest step, extreme values, an exact duplicate) it builds a `StandardMerkleTree` with the
// leaf encoding of `fedlearn.attestation.leaves.LEAF_ABI_TYPES` and writes every leaf (in the
// JSON form of `ContributionLeaf.to_dict`, integers as decimal strings), its leaf hash, its
// proof and the root. tests/test_attestation_merkle.py checks fedlearn's Merkle code against
// the committed file and re-runs this script to check the file is what the package produces.
// Everything is deterministic: values are SHA-256 digests of fixed labels, nothing is random.

import { createHash } from "node:crypto";
import { writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";

import { StandardMerkleTree } from "@openzeppelin/merkle-tree";

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..");
const PACKAGE = "@openzeppelin/merkle-tree";
const VERSION = createRequire(import.meta.url)(`${PACKAGE}/package.json`).version;

// Must equal fedlearn.attestation.leaves.LEAF_ABI_TYPES (the Python test checks it).
const LEAF_ENCODING = [
  "bytes32", // run_id
  "uint64", // round
  "address", // client
  "bytes32", // commitment
  "uint256", // score
  "uint256", // examples
  "uint256", // epsilon_micro
  "uint256", // amount
];
const FIELDS = ["run_id", "round", "client", "commitment", "score", "examples", "epsilon_micro", "amount"];
const UINT64_MAX = 2n ** 64n - 1n;
const UINT256_MAX = 2n ** 256n - 1n;
const WEI = 10n ** 18n;

function digest(label) {
  return "0x" + createHash("sha256").update(`fedlearn merkle vectors: ${label}`).digest("hex");
}

function address(label) {
  return digest(label).slice(0, 42);
}

function flipLastBit(hex) {
  const last = parseInt(hex.slice(-1), 16) ^ 1;
  return hex.slice(0, -1) + last.toString(16);
}

// A plausible leaf of client `i` in the round of case `name`.
function leaf(name, i, overrides = {}) {
  return {
    run_id: digest(`${name} run`),
    round: 3n,
    client: address(`${name} client ${i}`),
    commitment: digest(`${name} commitment ${i}`),
    score: 250_000n * BigInt(i + 1),
    examples: 32n + BigInt(i),
    epsilon_micro: 1_500_000n + BigInt(i),
    amount: WEI * BigInt(i + 1),
    ...overrides,
  };
}

function clients(name, count) {
  return Array.from({ length: count }, (_, i) => leaf(name, i));
}

function nearDuplicates() {
  const base = leaf("near duplicates", 0);
  return [
    base,
    { ...base, amount: base.amount + 1n },
    { ...base, score: base.score + 1n },
    { ...base, examples: base.examples + 1n },
    { ...base, epsilon_micro: base.epsilon_micro + 1n },
    { ...base, commitment: flipLastBit(base.commitment) },
    { ...base, client: flipLastBit(base.client) },
    { ...base, round: base.round + 1n },
    { ...base, run_id: flipLastBit(base.run_id) },
    { ...base, score: 0n, amount: 0n },
  ];
}

function extremes() {
  const zero32 = "0x" + "00".repeat(32);
  const ones32 = "0x" + "ff".repeat(32);
  return [
    leaf("extremes", 0, { run_id: zero32, round: 0n, client: "0x" + "00".repeat(20),
      commitment: zero32, score: 0n, examples: 0n, epsilon_micro: 0n, amount: 0n }),
    leaf("extremes", 1, { run_id: ones32, round: UINT64_MAX, client: "0x" + "ff".repeat(20),
      commitment: ones32, score: UINT256_MAX, examples: UINT256_MAX, epsilon_micro: UINT256_MAX,
      amount: UINT256_MAX }),
    leaf("extremes", 2, { epsilon_micro: UINT256_MAX }), // a client without DP (EPSILON_UNBOUNDED)
    leaf("extremes", 3, { epsilon_micro: UINT256_MAX - 1n, amount: 1n }),
  ];
}

const CASES = [
  { name: "1 leaf", leaves: clients("1 leaf", 1) },
  { name: "2 leaves", leaves: clients("2 leaves", 2) },
  { name: "3 leaves", leaves: clients("3 leaves", 3) },
  { name: "7 leaves", leaves: clients("7 leaves", 7) },
  { name: "16 leaves", leaves: clients("16 leaves", 16) },
  { name: "near duplicates", leaves: nearDuplicates() },
  { name: "extremes", leaves: extremes() },
  // OpenZeppelin accepts two equal leaves; fedlearn refuses them (one claim on chain).
  { name: "exact duplicate", leaves: [leaf("exact duplicate", 0), leaf("exact duplicate", 0)] },
];

function asJson(value) {
  const out = {};
  for (const field of FIELDS) {
    const item = value[field];
    out[field] = typeof item === "bigint" ? item.toString(10) : item;
  }
  return out;
}

function vectors({ name, leaves }) {
  const values = leaves.map((value) => FIELDS.map((field) => value[field]));
  const tree = StandardMerkleTree.of(values, LEAF_ENCODING);
  tree.validate();
  const proofs = values.map((_, index) => tree.getProof(index));
  values.forEach((value, index) => {
    if (!StandardMerkleTree.verify(tree.root, LEAF_ENCODING, value, proofs[index])) {
      throw new Error(`${name}: proof ${index} does not verify`);
    }
  });
  return {
    name,
    leaves: leaves.map(asJson),
    leaf_hashes: values.map((value) => tree.leafHash(value)),
    proofs,
    root: tree.root,
  };
}

const data = {
  generator: `${PACKAGE}@${VERSION} StandardMerkleTree`,
  script: "contracts/tools/merkle_vectors.mjs",
  leaf_encoding: LEAF_ENCODING,
  cases: CASES.map(vectors),
};
const out = resolve(process.argv[2] ?? resolve(ROOT, "tests", "data", "merkle_vectors.json"));
writeFileSync(out, JSON.stringify(data, null, 2) + "\n");
