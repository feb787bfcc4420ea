/**
 * The example: drive pipesim from a Playwright test through its admin API, assert what the dashboard shows.
 *
 * Freeze the clock at the moment a session's LLM is executing, check the page shows it, click Pause on the
 * page and check, in the journal, that the page sent `conversation_control` pause for that session; then
 * reset the server for the next test. The second test makes the backend refuse the page's first pause with a
 * stub (as a busy orchestrator would) and counts, in the journal, the pauses the page sent.
 */
import { expect, test } from "@playwright/test";

import { AdminClient } from "../src/admin-client";

const admin = new AdminClient(`http://127.0.0.1:${process.env.PIPESIM_ADMIN_PORT}`);

test.beforeEach(async ({ page }) => {
  await admin.reset();
  await admin.pauseClock(); // nothing moves unless the test moves it
  await page.goto("/");
  await expect(page.locator("#connection")).toHaveAttribute("data-state", "open");
});

test.afterEach(async () => {
  await admin.reset();
  await admin.resumeClock();
});

test("freeze at 'llm executing', pause from the page, check the journal", async ({ page }) => {
  const sessionId = "pw-1";
  const card = page.locator(`[data-session="${sessionId}"]`);
  const field = (name: string) => card.locator(`[data-field="${name}"]`);

  await admin.createSession({ session_id: sessionId });
  const frozen = await admin.runUntil(sessionId, { "services.llm": "executing" });
  expect(frozen.clock.paused).toBe(true);
  expect(frozen.session.services.llm).toBe("executing");

  // The page shows the frozen moment, and it stays there while the clock is paused.
  await expect(field("llm")).toHaveText("executing");
  await expect(field("state")).toHaveText("processing");
  await expect(field("status")).toHaveText("active");
  const seq = await field("seq").textContent();
  await page.waitForTimeout(500);
  await expect(field("seq")).toHaveText(seq ?? "");

  // A control from the page is answered while the clock is paused.
  await card.locator('[data-action="pause"]').click();
  await expect(field("status")).toHaveText("paused");
  expect((await admin.session(sessionId)).status).toBe("paused");

  const sent = await admin.journal({ session_id: sessionId, type: "conversation_control", direction: "in" });
  expect(sent.map((entry) => [entry.message.action, entry.result])).toEqual([["pause", "applied"]]);
  expect(sent[0].connection).toBeTruthy();

  // Reset: the session the test created is gone, and the page is told so.
  await admin.reset();
  expect((await admin.sessions()).map((s) => s.session_id)).not.toContain(sessionId);
  await expect(card).toHaveAttribute("data-status", "stopped");
});

test("a stub refuses the page's first pause; the journal counts the pauses it sent", async ({ page }) => {
  const sessionId = "pw-2";
  const card = page.locator(`[data-session="${sessionId}"]`);
  const status = card.locator('[data-field="status"]');
  await admin.createSession({ session_id: sessionId });
  await expect(status).toHaveText("active");

  // The stub answers instead of the model, once (times: 1); then the model handles pauses again.
  const stub = await admin.addStub({
    when: { type: "conversation_control", session_id: sessionId, message: { action: "pause" } },
    then: { respond: [{ type: "error", code: "illegal_control", message: "pause: the orchestrator is busy" }] },
    times: 1,
  });
  await card.locator('[data-action="pause"]').click();
  const refusal = page.locator(`#errors .error-item[data-error-session="${sessionId}"]`);
  await expect(refusal).toHaveAttribute("data-code", "illegal_control");
  await expect(refusal).toContainText("the orchestrator is busy");
  await expect(status).toHaveText("active");

  await card.locator('[data-action="pause"]').click();
  await expect(status).toHaveText("paused");

  // Did the page send exactly two pauses for this session (and did the stub take one)?
  expect(await admin.count({ direction: "in", session_id: sessionId, message: { action: "pause" } })).toBe(2);
  expect((await admin.stub(stub.id)).matched).toBe(1);
});
