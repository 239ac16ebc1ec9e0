// The polyverse chat page: streams /v1/chat/completions and colours the reply by forward pass.
"use strict";
const $ = (id) => document.getElementById(id);
const history = [];
let modelId = null;

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

async function loadModel() {
  $("method").innerHTML = "";
  try {
    const r = await fetch("/v1/models", { headers: headers() });
    const body = await r.json();
    if (!r.ok) throw new Error(body.error ? body.error.message : r.statusText);
    const card = body.data[0];
    modelId = card.id;
    $("model").textContent = card.id;
    const pv = card.polyverse || { methods: [], default_method: "" };
    for (const m of pv.methods) {
      const o = document.createElement("option");
      o.value = o.textContent = m;
      if (m === pv.default_method) o.selected = true;
      $("method").appendChild(o);
    }
  } catch (e) {
    $("model").textContent = "(model list unavailable: " + e.message + ")";
  }
}

function bubble(role, text) {
  const div = document.createElement("div");
  div.className = "msg " + role;
  if (text) div.textContent = text;
  $("log").appendChild(div);
  div.scrollIntoView({ block: "end" });
  return div;
}

function colour(pass) {
  return "hsl(" + ((pass * 137.5) % 360).toFixed(0) + ", 75%, 86%)";
}

function addPiece(reply, text, info) {
  const span = document.createElement("span");
  span.className = "p" + (info && info.accepted > 1 ? " multi" : "");
  span.textContent = text;
  if (info) {
    span.style.background = colour(info.pass);
    span.title = "pass " + info.pass + ": " + info.accepted + " token" + (info.accepted === 1 ? "" : "s") + " accepted";
    span.dataset.pass = info.pass;
  }
  reply.appendChild(span);
}

function showStats(reply, usage) {
  const pv = usage.polyverse || {};
  const div = document.createElement("div");
  div.className = "stats";
  div.textContent = usage.completion_tokens + " tokens in " + pv.forward_passes + " forward passes (" +
    (pv.mean_accepted || 0).toFixed(2) + " tokens/pass), " + (pv.tokens_per_second || 0).toFixed(1) +
    " tok/s, method " + pv.method;
  reply.appendChild(div);
}

async function send(prompt) {
  localStorage.setItem("polyverse-key", $("api-key").value.trim());
  history.push({ role: "user", content: prompt });
  bubble("user", prompt);
  const reply = bubble("assistant", "");
  reply.dataset.state = "streaming";
  $("send").disabled = true;
  let text = "";
  try {
    const body = {
      model: modelId, messages: history, stream: true, stream_options: { include_usage: true },
      max_tokens: parseInt($("max-tokens").value, 10) || 128,
      temperature: parseFloat($("temperature").value) || 0,
      polyverse: { method: $("method").value || undefined },
    };
    const r = await fetch("/v1/chat/completions", { method: "POST", headers: headers(), body: JSON.stringify(body) });
    if (!r.ok) {
      const err = await r.json().catch(() => ({}));
      throw new Error(err.error ? err.error.message : r.status + " " + r.statusText);
    }
    const reader = r.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        for (const line of event.split("\n")) {
          if (!line.startsWith("data: ")) continue;
          const data = line.slice(6);
          if (data === "[DONE]") continue;
          const msg = JSON.parse(data);
          if (msg.error) throw new Error(msg.error.message);
          if (msg.usage) showStats(reply, msg.usage);
          const choice = msg.choices && msg.choices[0];
          if (choice && choice.delta && choice.delta.content) {
            text += choice.delta.content;
            addPiece(reply, choice.delta.content, msg.polyverse);
            reply.scrollIntoView({ block: "end" });
          }
        }
      }
    }
    history.push({ role: "assistant", content: text });
    reply.dataset.state = "done";
  } catch (e) {
    const div = document.createElement("div");
    div.className = "error";
    div.textContent = "error: " + e.message;
    reply.appendChild(div);
    reply.dataset.state = "error";
    history.pop();
  } finally {
    $("send").disabled = false;
  }
}

$("form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const prompt = $("prompt").value.trim();
  if (!prompt || $("send").disabled) return;
  $("prompt").value = "";
  send(prompt);
});
$("prompt").addEventListener("keydown", (ev) => {
  if (ev.key === "Enter" && !ev.shiftKey) { ev.preventDefault(); $("form").requestSubmit(); }
});
$("clear").addEventListener("click", () => { history.length = 0; $("log").innerHTML = ""; });
$("api-key").addEventListener("change", () => {
  localStorage.setItem("polyverse-key", $("api-key").value.trim());
  loadModel();
});
$("api-key").value = localStorage.getItem("polyverse-key") || "";
loadModel();
