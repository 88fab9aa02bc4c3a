// TypeScript models of contracts/asyncapi.json with Modelina, one file per schema.
//
//   node scripts/codegen/generate.mjs [contracts/asyncapi.json] [out-dir]
//
// Interfaces with the wire's own property names (`user_id`, not `userId`), string
// unions for enums, `Record<string, any>` for free-form objects. Modelina 5.10 types a
// boolean or number `const` as plain `boolean` / `number` (and drops `const: false`), so
// the preset below renders the literal the schema pins (`ok: true`, `ok: false`,
// `version: 1`): that is what lets TypeScript narrow `WithdrawReply` to
// `WithdrawOkReply` on `if (reply.ok)`.
import { mkdir, readFile, rm } from "node:fs/promises";
import { fileURLToPath } from "node:url";
import { TypeScriptFileGenerator } from "@asyncapi/modelina";

export const DEFAULT_DOCUMENT = fileURLToPath(new URL("../../contracts/asyncapi.json", import.meta.url));

const LITERAL_CONSTANTS = {
  interface: {
    property({ property, content }) {
      const value = property.property.originalInput?.const;
      if (typeof value !== "boolean" && typeof value !== "number") return content;
      return content.replace(/: (boolean|number);$/, `: ${JSON.stringify(value)};`);
    },
  },
};

export const generator = new TypeScriptFileGenerator({
  modelType: "interface",
  enumType: "union",
  mapType: "record",
  rawPropertyNames: true,
  moduleSystem: "ESM",
  processorOptions: { interpreter: { ignoreAdditionalProperties: true } },
  presets: [LITERAL_CONSTANTS],
});

/** Writes one `<Title>.ts` per model into `outDir` (emptied first); returns the models. */
export async function generateModels(documentPath, outDir) {
  const document = JSON.parse(await readFile(documentPath, "utf8"));
  await rm(outDir, { recursive: true, force: true });
  await mkdir(outDir, { recursive: true });
  return generator.generateToFiles(document, outDir, { exportType: "named" }, true);
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const [documentPath = DEFAULT_DOCUMENT, outDir = "build/typescript-models"] = process.argv.slice(2);
  const models = await generateModels(documentPath, outDir);
  console.log(`${outDir}: ${models.length} TypeScript models from ${documentPath}`);
}
