// A private Postgres server per test file (Debian's postgresql package, which
// scripts/test installs): initdb into a temp dir, a free port on 127.0.0.1,
// trust authentication for the user "herald". Postgres refuses to run as
// root, so as root it runs as `nobody` (setpriv execs the server itself, so
// the child's pid is the server's). `stop()` is a fast shutdown, `start()`
// starts it again on the same port and data.
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { freePort } from './harness.mjs';

/** A Postgres program: /usr/lib/postgresql/<newest>/bin, else the PATH. */
function pgBinary(name) {
  const root = '/usr/lib/postgresql';
  if (existsSync(root)) {
    const versions = readdirSync(root).sort((a, b) => Number(b) - Number(a));
    for (const v of versions) {
      const p = join(root, v, 'bin', name);
      if (existsSync(p)) return p;
    }
  }
  for (const dir of (process.env.PATH ?? '').split(':')) {
    const p = join(dir, name);
    if (existsSync(p)) return p;
  }
  throw new Error(`${name} not found: install Debian's postgresql package (scripts/test does)`);
}

const isRoot = process.getuid?.() === 0;

/** [command, args] running `program` as nobody when we are root. */
function asDbUser(program, args) {
  return isRoot
    ? ['setpriv', ['--reuid=nobody', '--regid=nogroup', '--clear-groups', '--', program, ...args]]
    : [program, args];
}

export async function startPostgres() {
  const dir = mkdtempSync(join(tmpdir(), 'herald-pg-'));
  if (isRoot) execFileSync('chown', ['nobody:nogroup', dir]);
  const data = join(dir, 'data');
  const [initCmd, initArgs] = asDbUser(pgBinary('initdb'), [
    '-D', data, '-U', 'herald', '--auth=trust', '--no-sync', '--locale=C', '-E', 'UTF8',
  ]);
  execFileSync(initCmd, initArgs, { env: { ...process.env, LC_ALL: 'C' }, stdio: 'pipe' });
  const port = await freePort();
  let child = null;
  let exitPromise = null;
  let output = '';

  const isReady = () =>
    new Promise((res) => {
      const p = spawn(pgBinary('pg_isready'), ['-h', '127.0.0.1', '-p', String(port), '-U', 'herald', '-d', 'postgres'], {
        stdio: 'ignore',
      });
      p.once('exit', (code) => res(code === 0));
      p.once('error', () => res(false));
    });

  const pg = {
    port,
    url: `postgres://herald@127.0.0.1:${port}/postgres`,
    logs: () => output,
    async start(readyTimeout = 30000) {
      if (child) return;
      const [cmd, args] = asDbUser(pgBinary('postgres'), [
        '-D', data, '-p', String(port), '-k', dir,
        '-c', 'listen_addresses=127.0.0.1', '-c', 'fsync=off', '-c', 'synchronous_commit=off',
        '-c', 'full_page_writes=off',
      ]);
      child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, LC_ALL: 'C' } });
      child.stdout.on('data', (d) => (output += d));
      child.stderr.on('data', (d) => (output += d));
      let exited = false;
      exitPromise = new Promise((r) =>
        child.once('exit', () => {
          exited = true;
          r();
        }),
      );
      const deadline = Date.now() + readyTimeout;
      while (Date.now() < deadline && !exited) {
        if (await isReady()) return;
        // Poll interval for process readiness (not test synchronisation).
        await new Promise((r) => setTimeout(r, 50));
      }
      const out = output;
      await pg.stop();
      throw new Error(`postgres did not become ready on port ${port}:\n${out}`);
    },
    /** Fast shutdown (SIGINT): clients are disconnected, the data stays. */
    async stop() {
      if (!child) return;
      const c = child;
      const exited = exitPromise;
      child = null;
      c.kill('SIGINT');
      const t = setTimeout(() => c.kill('SIGKILL'), 5000);
      await exited;
      clearTimeout(t);
    },
    /** Runs SQL through psql as an operator would. */
    sql(statement) {
      return execFileSync(
        pgBinary('psql'),
        ['-h', '127.0.0.1', '-p', String(port), '-U', 'herald', '-d', 'postgres', '-v', 'ON_ERROR_STOP=1', '-tAc', statement],
        { encoding: 'utf8' },
      ).trim();
    },
    async destroy() {
      await pg.stop();
      rmSync(dir, { recursive: true, force: true });
    },
  };
  await pg.start();
  return pg;
}
