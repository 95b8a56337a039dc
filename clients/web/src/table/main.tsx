/**
 * The table: the page players and game masters use, served by questboard
 * at `/` (and `/join`, where share links land). Built on
 * `@questboard/client`; every piece of untrusted text (model output,
 * names, user ids, file names) is rendered as text by Preact, never as
 * HTML.
 */

import { render } from "preact";
import { App, takeInvite } from "./app.js";

const root = document.getElementById("table");
takeInvite();
if (root) render(<App />, root);
