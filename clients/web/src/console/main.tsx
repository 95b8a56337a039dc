/**
 * The operators' console, served by questboard at `/console`: queues, jobs,
 * session lanes, the schedule, runs and the audit log, over the
 * `/api/admin` routes. Every piece of untrusted text (payloads, errors,
 * session names, user ids) is rendered as text by Preact, never as HTML.
 */

import { render } from "preact";
import { App } from "./app.js";

const root = document.getElementById("console");
if (root) render(<App />, root);
