/** `npm run generate`: writes `src/api.ts` from a fresh `questboard dev`. */

import { writeFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import path from "node:path";

import { generatedTypes } from "./openapi.js";
import { Questboard } from "./questboard.js";

const here = path.dirname(fileURLToPath(import.meta.url));
const target = path.resolve(here, "../../src/api.ts");
const qb = await Questboard.start();
try {
  writeFileSync(target, await generatedTypes(qb.baseUrl));
  console.log(`wrote ${target}`);
} finally {
  await qb.stop();
}
