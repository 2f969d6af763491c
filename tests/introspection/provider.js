// A real third-party authorization server for the `oauth2-introspection` plugin tests:
// oidc-provider (the certified OpenID Connect library) with opaque client_credentials tokens,
// RFC 7662 introspection and RFC 7009 revocation enabled.
//
// Environment:
//   PORT       loopback port to listen on (required)
//   TOKEN_TTL  lifetime in seconds of tokens issued to the `gateway` client (default 600)
//
// Clients:
//   gateway / gateway-secret  client_credentials, scopes `read write`; also the introspecting client
//   short   / short-secret    client_credentials, tokens live 4 seconds (the expiry test)
//
// Test hooks (not part of oidc-provider):
//   GET /__count   {"introspections": n}: how many introspection requests reached the server

import Provider from 'oidc-provider';

const port = Number(process.env.PORT);
if (!Number.isInteger(port) || port <= 0) {
  console.error('PORT must be set to the port to listen on');
  process.exit(2);
}
const tokenTtl = Number(process.env.TOKEN_TTL || 600);

const provider = new Provider(`http://127.0.0.1:${port}`, {
  clients: [
    {
      client_id: 'gateway',
      client_secret: 'gateway-secret',
      grant_types: ['client_credentials'],
      response_types: [],
      redirect_uris: [],
      scope: 'read write',
    },
    {
      client_id: 'short',
      client_secret: 'short-secret',
      grant_types: ['client_credentials'],
      response_types: [],
      redirect_uris: [],
      scope: 'read write',
    },
  ],
  cookies: { keys: ['test-only-cookie-key'] },
  scopes: ['openid', 'offline_access', 'read', 'write'],
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    introspection: { enabled: true },
    revocation: { enabled: true },
  },
  ttl: {
    ClientCredentials(ctx, token, client) {
      return client.clientId === 'short' ? 4 : tokenTtl;
    },
  },
});

let introspections = 0;
provider.use(async (ctx, next) => {
  if (ctx.method === 'GET' && ctx.path === '/__count') {
    ctx.body = { introspections };
    return;
  }
  if (ctx.method === 'POST' && ctx.path === '/token/introspection') {
    introspections += 1;
  }
  await next();
});

provider.listen(port, '127.0.0.1', () => {
  console.log(`oidc-provider listening on http://127.0.0.1:${port}`);
});
