// An unmodified Express 5 app, as a team would put behind the sidecar: it
// trusts the sidecar for authentication and keeps a secret under /private.
// It routes on the raw path it receives (Express decodes neither `%2F` nor
// `%2e` before routing, and resolves no dot segments), which is what made
// the skip_auth bypass possible. Every request it serves is printed as one
// JSON line for the test; `node app.mjs PORT` (0: any), then it prints
// {"event":"listening","port":N}.
import express from "express";

const app = express();
const report = (req, page) =>
  console.log(JSON.stringify({ event: "request", page, url: req.originalUrl }));

app.get("/private/{*rest}", (req, res) => {
  report(req, "private");
  res.type("text/plain").send("SECRET-PAGE for " + (req.get("x-auth-request-user") || "nobody"));
});
app.get("/public/{*rest}", (req, res) => {
  report(req, "public");
  res.type("text/plain").send("public page");
});
app.use((req, res) => {
  report(req, "none");
  res.status(404).type("text/plain").send("not found");
});

const server = app.listen(Number(process.argv[2] || 0), "127.0.0.1", () => {
  console.log(JSON.stringify({ event: "listening", port: server.address().port }));
});
process.stdin.on("end", () => process.exit(0));
process.stdin.resume();
