// The third-party OpenID provider the OIDC tests run: oauth2-mock-server
// (discovery, authorize with PKCE and nonce, token, refresh, userinfo, JWKS),
// on 127.0.0.1, with a small control channel for the tests:
//   argv: [port] [expires_in seconds]
//   stdout: one JSON line per event: {"event":"listening","issuer":...},
//           {"event":"token",...} per token request, {"event":"userinfo"},
//           {"event":"rotated","kid":...}
//   stdin:  "rotate RS256" / "rotate ES256": publish a new key and sign
//           everything from now on with it (the old key stays published,
//           as providers do during a rotation);
//           "claims {json}": these claims go into every token from now on
//           (over the defaults below); answered {"event":"claims"};
//           "logout {json}": a back-channel logout token with these claims,
//           answered {"event":"logout_token","token":...}.
// The signing key is chosen by kid through the library's own buildToken
// option; everything else is oauth2-mock-server as published.

import { OAuth2Server } from 'oauth2-mock-server';
import readline from 'node:readline';

const port = Number(process.argv[2] ?? 0);
const expiresIn = Number(process.argv[3] ?? 3600);
const emit = (o) => process.stdout.write(JSON.stringify(o) + '\n');

const server = new OAuth2Server();
let kid = 'key-1';
let rotations = 1;
await server.issuer.keys.generate('RS256', { kid });
const build = server.issuer.buildToken.bind(server.issuer);
server.issuer.buildToken = (opts) => build({ ...opts, kid });

let extraClaims = {};
server.service.on('beforeTokenSigning', (token) => {
  Object.assign(token.payload, {
    email: 'john.doe@example.com',
    name: 'John Doe',
    groups: ['staff', 'admins'],
  }, extraClaims);
});

server.service.on('beforeResponse', (response, req) => {
  response.body.expires_in = expiresIn;
  const body = req.body ?? {};
  const basic = (req.headers.authorization ?? '').startsWith('Basic ')
    ? Buffer.from(req.headers.authorization.slice(6), 'base64').toString()
    : null;
  emit({
    event: 'token',
    grant_type: body.grant_type,
    auth: basic !== null ? 'basic' : 'post',
    basic,
    client_id: body.client_id ?? null,
    client_secret: body.client_secret ?? null,
    code_verifier: typeof body.code_verifier === 'string',
    kid,
  });
});

server.service.on('beforeUserinfo', (response, req) => {
  response.body = { ...response.body, nickname: 'johnny', email: 'john.doe@example.com' };
  emit({ event: 'userinfo', bearer: (req.headers.authorization ?? '').startsWith('Bearer ') });
});

await server.start(port, '127.0.0.1');
// The library names the issuer after "localhost"; the tests use the address.
server.issuer.url = `http://127.0.0.1:${server.address().port}`;
emit({ event: 'listening', issuer: server.issuer.url });

readline.createInterface({ input: process.stdin }).on('line', async (line) => {
  const [cmd, alg] = line.trim().split(/\s+/);
  if (cmd === 'logout') {
    // A back-channel logout token signed with the current key: these
    // claims over iss, iat, exp, nbf (a null removes one).
    const claims = JSON.parse(line.trim().slice('logout'.length));
    const token = await server.issuer.buildToken({
      scopesOrTransform: (header, payload) => {
        Object.assign(payload, claims);
        for (const k of Object.keys(payload)) if (payload[k] === null) delete payload[k];
      },
    });
    emit({ event: 'logout_token', token });
  }
  if (cmd === 'claims') {
    extraClaims = JSON.parse(line.trim().slice('claims'.length));
    emit({ event: 'claims' });
  }
  if (cmd === 'rotate') {
    rotations += 1;
    const next = `key-${rotations}`;
    await server.issuer.keys.generate(alg ?? 'RS256', { kid: next });
    kid = next;
    emit({ event: 'rotated', kid });
  }
});

process.stdin.on('end', async () => {
  await server.stop();
  process.exit(0);
});
