// Builds the page's script and stylesheet into dist/ (committed: a plain
// `cargo build` embeds them, with src/table/index.html and icon.svg, which
// need no build). Deterministic: the same sources and lockfile give the
// same bytes, which CI checks (scripts/web-check rebuilds and diffs).
import { build } from "esbuild";

await build({
  entryPoints: [
    { in: "src/table/main.tsx", out: "table" },
    { in: "src/table/table.css", out: "table" },
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
