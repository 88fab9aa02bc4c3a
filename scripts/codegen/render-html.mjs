// The HTML documentation of contracts/asyncapi.json, rendered offline with the pinned
// @asyncapi/generator and @asyncapi/html-template from node_modules (nothing is
// downloaded: the template is resolved where npm installed it; one self-contained
// index.html with its scripts and styles inline).
//
//   node scripts/codegen/render-html.mjs [contracts/asyncapi.json] [out-dir]
import { createRequire } from "node:module";
import { mkdir } from "node:fs/promises";
import { resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { DEFAULT_DOCUMENT } from "./generate.mjs";

const require = createRequire(import.meta.url);
const Generator = require("@asyncapi/generator");
// A path, not the package name: the generator resolves names from the current directory
// and installs what it does not find there.
const TEMPLATE = fileURLToPath(new URL("node_modules/@asyncapi/html-template", import.meta.url));

export async function renderHtml(documentPath, outDir) {
  await mkdir(outDir, { recursive: true });
  const generator = new Generator(TEMPLATE, resolve(outDir), {
    forceWrite: true,
    install: false, // use the installed template, never fetch one
    templateParams: { singleFile: "true", sidebarOrganization: "byTags" },
  });
  await generator.generateFromFile(resolve(documentPath));
  return resolve(outDir, "index.html");
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const [documentPath = DEFAULT_DOCUMENT, outDir = "build/asyncapi-html"] = process.argv.slice(2);
  console.log(`rendered ${await renderHtml(documentPath, outDir)}`);
}
