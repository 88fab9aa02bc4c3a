// What a TypeScript caller gets from contracts/asyncapi.json, with the real npm tools:
// Modelina's models compile under `tsc --strict`, `ok` narrows a reply to its success
// or its error type (and reading `error` off a success reply does not compile), and
// the HTML docs render with the network cut off.
//
//   node --test scripts/codegen/   (`make codegen`; `make test` runs it)
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { copyFile, mkdtemp, readFile, readdir, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { DEFAULT_DOCUMENT, generateModels } from "./generate.mjs";

const run = promisify(execFile);
const HERE = fileURLToPath(new URL(".", import.meta.url));
const TSC = join(HERE, "node_modules", "typescript", "bin", "tsc");
const DOCUMENT = process.env.ASYNCAPI_DOCUMENT ?? DEFAULT_DOCUMENT;
const TSC_FLAGS = ["--strict", "--noEmit", "--target", "es2022", "--module", "esnext",
  "--moduleResolution", "bundler", "--noUnusedLocals", "--pretty", "false"];

let work, models, modelFiles;

before(async () => {
  work = await mkdtemp(join(tmpdir(), "billing-codegen-"));
  models = await generateModels(DOCUMENT, join(work, "models"));
  modelFiles = (await readdir(join(work, "models"))).map((name) => join(work, "models", name));
  for (const fixture of ["narrow-on-ok.ts", "error-on-ok-reply.ts"]) {
    await copyFile(join(HERE, "fixtures", fixture), join(work, fixture));
  }
});

after(async () => {
  await rm(work, { recursive: true, force: true });
});

async function tsc(...files) {
  try {
    const { stdout } = await run(process.execPath, [TSC, ...TSC_FLAGS, ...files]);
    return { code: 0, output: stdout };
  } catch (failed) {
    return { code: failed.code, output: `${failed.stdout}${failed.stderr}` };
  }
}

test("every generated model is named by a schema title of the document", async () => {
  const document = JSON.parse(await readFile(DOCUMENT, "utf8"));
  const titles = new Set(Object.values(document.components.schemas).map((schema) => schema.title));
  const names = models.map((model) => model.modelName);
  assert.ok(names.length >= Object.keys(document.components.schemas).length);
  assert.deepEqual(names.filter((name) => !titles.has(name)), [], "anonymous or mangled names");
  for (const expected of ["WithdrawReply", "WithdrawOkReply", "ErrorReply", "DepositCompletedEnvelope", "Money"]) {
    assert.ok(names.includes(expected), `${expected} is generated`);
  }
});

test("the models and a caller that narrows on `ok` compile under tsc --strict", async () => {
  const { code, output } = await tsc(...modelFiles, join(work, "narrow-on-ok.ts"));
  assert.equal(code, 0, output);
});

test("reading `error` from a success reply does not compile", async () => {
  const { code, output } = await tsc(...modelFiles, join(work, "error-on-ok-reply.ts"));
  assert.notEqual(code, 0, "tsc accepted reply.error on a success reply");
  const errors = output.split("\n").filter((line) => line.includes("error TS"));
  assert.equal(errors.length, 1, output);
  assert.match(errors[0], /error-on-ok-reply\.ts\(6,.*TS2339: Property 'error' does not exist on type 'WithdrawOkReply'/);
});

// (the timeout turns a hang, e.g. a download retried forever, into a failure)
test("the HTML docs render offline into one self-contained page", { timeout: 300_000 }, async () => {
  const out = join(work, "html");
  const block = join(HERE, "no-network.mjs");
  const { stdout } = await run(process.execPath, ["--import", block, join(HERE, "render-html.mjs"), DOCUMENT, out]);
  assert.match(stdout, /rendered .*index\.html/);
  const html = await readFile(join(out, "index.html"), "utf8");
  assert.match(html, /<title>billing-worker \S+ documentation<\/title>/);
  for (const text of ["billing.wallet.deposit", "WithdrawReply", "deposit.completed"]) {
    assert.ok(html.includes(text), `the page shows ${text}`);
  }
  assert.doesNotMatch(html, /<(script|link)[^>]+(src|href)="https?:/, "the page loads nothing remote");
});
