// A real OIDC issuer for framegate's OIDC tests: oauth2-mock-server (discovery,
// JWKS, the client_credentials /token endpoint) on 127.0.0.1, with an RS256
// and an ES256 signing key, plus a few test controls.
//
//   node issuer.mjs [--port N] [--issuer URL]
//
// Prints `LISTENING <url>` on stdout once it accepts connections. `--issuer`
// overrides the `iss` string (and the discovery document's issuer), so a
// second instance can sign with other keys under the same name.
//
// Tokens: POST /token, a JSON or form body with grant_type=client_credentials
// and these optional fields, copied into the token by `beforeTokenSigning`:
//   aud          string or array (the library's own field)
//   scope        space-separated scopes (the library's own field)
//   claims       an object (or its JSON text) merged into the payload
//   expires_in   exp = iat + N seconds (may be negative: already expired)
//   nbf_in       nbf = iat + N seconds (positive: not yet valid)
//   omit         a list (or comma-separated text) of claims to delete
// The signing key is chosen by the query parameter `alg` (RS256, the default,
// or ES256): POST /token?alg=ES256.
//
// Controls:
//   POST /_control/rotate   new RS256 and ES256 keys become the signing keys;
//                           with {"retire": true} the old ones leave the JWKS.
//                           Answers {"kids": {"RS256": ..., "ES256": ...}}.
//   GET  /_control/stats    {"jwks": N, "discovery": N, "token": N}: requests
//                           served so far, to count a verifier's JWKS fetches.
import { AsyncLocalStorage } from "node:async_hooks";
import http from "node:http";

import { OAuth2Issuer, OAuth2Service } from "oauth2-mock-server";

const ALGS = ["RS256", "ES256"];

function arg(name) {
  const i = process.argv.indexOf(name);
  return i > 0 ? process.argv[i + 1] : undefined;
}

const issuer = new OAuth2Issuer();
const service = new OAuth2Service(issuer);
const current = {};
const retired = new Set();
const stats = { jwks: 0, discovery: 0, token: 0 };
const request = new AsyncLocalStorage();

async function rotate(retire) {
  const kids = {};
  for (const alg of ALGS) {
    if (retire && current[alg]) retired.add(current[alg]);
    const key = await issuer.keys.generate(alg);
    current[alg] = key.kid;
    kids[alg] = key.kid;
  }
  return kids;
}

// The library picks keys round-robin; sign with the current key of the
// requested algorithm instead.
const keys = issuer.keys;
const get = keys.get.bind(keys);
keys.get = (kid) => get(kid ?? current[request.getStore()?.alg ?? "RS256"]);
// Retired keys are no longer published.
const toJSON = keys.toJSON.bind(keys);
keys.toJSON = (priv) => toJSON(priv).filter((k) => !retired.has(k.kid));

service.on("beforeTokenSigning", (token, req) => {
  const body = req.body ?? {};
  const p = token.payload;
  p.sub = body.client_id ?? "service-account";
  let claims = body.claims;
  if (typeof claims === "string") claims = JSON.parse(claims);
  if (claims && typeof claims === "object") Object.assign(p, claims);
  if (body.expires_in !== undefined) p.exp = p.iat + Number(body.expires_in);
  if (body.nbf_in !== undefined) p.nbf = p.iat + Number(body.nbf_in);
  let omit = body.omit ?? [];
  if (typeof omit === "string") omit = omit.split(",");
  for (const c of omit) delete p[c];
});

function json(res, status, body) {
  res.writeHead(status, { "content-type": "application/json" });
  res.end(JSON.stringify(body));
}

const server = http.createServer((req, res) => {
  const url = new URL(req.url ?? "/", "http://localhost");
  if (url.pathname === "/_control/stats") return json(res, 200, stats);
  if (url.pathname === "/_control/rotate" && req.method === "POST") {
    let raw = "";
    req.on("data", (c) => (raw += c));
    req.on("end", () => {
      let retire = false;
      try {
        retire = raw ? JSON.parse(raw).retire === true : false;
      } catch {
        return json(res, 400, { error: "body must be JSON" });
      }
      rotate(retire).then(
        (kids) => json(res, 200, { kids }),
        (e) => json(res, 500, { error: String(e) }),
      );
    });
    return;
  }
  if (url.pathname === "/jwks") stats.jwks += 1;
  if (url.pathname === "/.well-known/openid-configuration") stats.discovery += 1;
  if (url.pathname === "/token") stats.token += 1;
  const alg = url.searchParams.get("alg") ?? "RS256";
  if (!ALGS.includes(alg)) return json(res, 400, { error: `alg must be one of ${ALGS}` });
  request.run({ alg }, () => service.requestHandler(req, res));
});

await rotate(false);
server.listen(Number(arg("--port") ?? 0), "127.0.0.1", () => {
  const { port } = server.address();
  const url = `http://127.0.0.1:${port}`;
  issuer.url = arg("--issuer") ?? url;
  console.log(`LISTENING ${url}`);
  console.log(`ISSUER ${issuer.url}`);
  console.log(`KIDS ${JSON.stringify(current)}`);
});

for (const sig of ["SIGTERM", "SIGINT"]) process.on(sig, () => server.close(() => process.exit(0)));
// The test that started this process holds stdin; when it goes, so do we.
process.stdin.on("end", () => process.exit(0));
process.stdin.resume();
