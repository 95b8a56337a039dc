// Builds the pages' scripts and stylesheets (the table, the console) into dist/ (committed: a plain
// `cargo build` embeds them, with src/shared/page.html and icon.svg, which
// need no build). Deterministic: the same sources and lockfile give the
// same bytes, which CI checks (scripts/web-check rebuilds and diffs).
import { build } from "esbuild";

await build({
  entryPoints: [
    { in: "src/table/main.tsx", out: "table" },
    { in: "src/table/table.css", out: "table" },
    { in: "src/console/main.tsx", out: "console" },
    { in: "src/console/console.css", out: "console" },
  ],
  outdir: "dist",
  bundle: true,
  minify: true,
  format: "esm",
  target: "es2022",
  jsx: "automatic",
  jsxImportSource: "preact",
  legalComments: "eof",
  logLevel: "warning",
  charset: "utf8",
});
