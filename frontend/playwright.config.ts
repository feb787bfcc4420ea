/**
 * The example Playwright test of pipesim's dashboard (tests/dashboard.spec.ts).
 *
 * `webServer` starts `pipesim serve frontend_demo` on PIPESIM_PORT (WebSocket and page, default 8101) and
 * PIPESIM_ADMIN_PORT (admin API, default 8102) and waits for `/healthz`. The pipesim command is $PIPESIM,
 * else the repository's `.venv/bin/pipesim`. The browser is Chromium: $CHROMIUM, else Debian's
 * /usr/bin/chromium (no `playwright install`).
 */
import { existsSync } from "node:fs";
import { resolve } from "node:path";

import { defineConfig, devices } from "@playwright/test";

// Set once here: the workers inherit the runner's environment, so the spec reads the same ports.
process.env.PIPESIM_PORT ??= "8101";
process.env.PIPESIM_ADMIN_PORT ??= "8102";
const port = process.env.PIPESIM_PORT;
const adminPort = process.env.PIPESIM_ADMIN_PORT;
const venvPipesim = resolve(__dirname, "..", ".venv", "bin", "pipesim");
const pipesim = process.env.PIPESIM ?? (existsSync(venvPipesim) ? venvPipesim : "pipesim");

export default defineConfig({
  testDir: "tests",
  outputDir: "out/test-results",
  // One pipesim server, one clock: tests that freeze and reset it cannot run side by side.
  workers: 1,
  fullyParallel: false,
  forbidOnly: !!process.env.CI,
  timeout: 60_000,
  expect: { timeout: 10_000 },
  reporter: "list",
  use: {
    baseURL: `http://127.0.0.1:${port}`,
    trace: "retain-on-failure",
  },
  projects: [
    {
      name: "chromium",
      use: {
        ...devices["Desktop Chrome"],
        launchOptions: {
          executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
          args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"],
        },
      },
    },
  ],
  webServer: {
    command: `"${pipesim}" serve frontend_demo --port ${port} --admin-port ${adminPort}`,
    url: `http://127.0.0.1:${port}/healthz`,
    reuseExistingServer: false,
    timeout: 60_000,
    stdout: "ignore",
    stderr: "pipe",
    gracefulShutdown: { signal: "SIGINT", timeout: 5_000 },
  },
});
