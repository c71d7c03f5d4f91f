// herald console: a single page over the admin API (/admin/api). No framework, no build step.
//
// Safety rule: every piece of data (app ids, channel and event names, user info, error messages)
// reaches the DOM through textContent or a property, never parsed as HTML; the page's CSP forbids
// inline script and any other origin. The admin token lives in sessionStorage and travels only
// in the Authorization header (never in a URL).
'use strict';

(() => {
  const TOKEN_KEY = 'herald.admin.token';
  const POLL_MS = 2000;
  const HISTORY = 150; // chart samples: 5 minutes at one per 2 s
  const LOG_MAX = 500; // live log rows kept
  const API = location.pathname.replace(/\/console\/?$/, '') + '/admin/api';

  const $main = document.getElementById('main');
  const $nav = document.getElementById('nav');
  const $topRight = document.getElementById('top-right');
  const $live = document.getElementById('live');
  const $liveText = document.getElementById('live-text');

  // ---------------------------------------------------------------- DOM helpers

  /** Builds an element. `props`: class, text, on<event>, dataset keys (data-x), else attributes. */
  function h(tag, props, ...children) {
    const el = document.createElement(tag);
    setProps(el, props);
    append(el, children);
    return el;
  }

  const SVG_NS = 'http://www.w3.org/2000/svg';
  function svg(tag, attrs, ...children) {
    const el = document.createElementNS(SVG_NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === 'text') el.textContent = v;
      else el.setAttribute(k, String(v));
    }
    append(el, children);
    return el;
  }

  function setProps(el, props) {
    if (!props) return;
    for (const [k, v] of Object.entries(props)) {
      if (v === undefined || v === null || v === false) continue;
      if (k === 'class') el.className = v;
      else if (k === 'text') el.textContent = String(v);
      else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
      else if (k === 'value') el.value = v;
      else if (k === 'checked') el.checked = !!v;
      else if (k === 'disabled') el.disabled = !!v;
      else if (v === true) el.setAttribute(k, '');
      else el.setAttribute(k, String(v));
    }
  }

  function append(el, children) {
    for (const c of children.flat(Infinity)) {
      if (c === null || c === undefined || c === false) continue;
      el.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
  }

  function clear(el) {
    while (el.firstChild) el.removeChild(el.firstChild);
  }

  // ---------------------------------------------------------------- formatting

  const nf = new Intl.NumberFormat('en-US');
  const fmtInt = (n) => nf.format(Math.round(Number(n) || 0));
  function fmtRate(n) {
    n = Number(n) || 0;
    if (n === 0) return '0';
    if (n < 10) return n.toFixed(1);
    return fmtInt(n);
  }
  function fmtDuration(ms) {
    let s = Math.max(0, Math.floor(ms / 1000));
    const d = Math.floor(s / 86400);
    s -= d * 86400;
    const hh = Math.floor(s / 3600);
    s -= hh * 3600;
    const m = Math.floor(s / 60);
    s -= m * 60;
    if (d) return `${d}d ${hh}h`;
    if (hh) return `${hh}h ${m}m`;
    if (m) return `${m}m ${s}s`;
    return `${s}s`;
  }
  function fmtAgo(ms) {
    const s = Math.round((Date.now() - ms) / 1000);
    return s <= 2 ? 'now' : `${fmtDuration(s * 1000)} ago`;
  }
  function fmtClock(ms) {
    const d = new Date(ms);
    const p = (n, w = 2) => String(n).padStart(w, '0');
    return `${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}.${p(d.getMilliseconds(), 3)}`;
  }
  function fmtBytes(n) {
    n = Number(n) || 0;
    if (n < 1024) return `${n} B`;
    if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KB`;
    return `${(n / 1024 / 1024).toFixed(1)} MB`;
  }

  // ---------------------------------------------------------------- API

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  const token = () => sessionStorage.getItem(TOKEN_KEY);

  async function api(method, path, body, t = token()) {
    const init = { method, headers: { Authorization: `Bearer ${t}`, Accept: 'application/json' }, cache: 'no-store' };
    if (body !== undefined) {
      init.headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    let res;
    try {
      res = await fetch(API + path, init);
    } catch (e) {
      throw new ApiError(0, 'Could not reach herald.');
    }
    let data = null;
    const text = await res.text();
    try {
      data = text ? JSON.parse(text) : null;
    } catch {
      data = null;
    }
    if (!res.ok) {
      const msg = data && typeof data.error === 'string' ? data.error : `${res.status} ${res.statusText}`;
      const err = new ApiError(res.status, msg);
      if (res.status === 401 && t === token()) signOut(`${msg} (401): sign in again.`);
      throw err;
    }
    return data;
  }

  const enc = encodeURIComponent;

  // ---------------------------------------------------------------- state

  const state = {
    nodes: [],
    apps: [],
    appStore: null,
    readOnly: false,
    samples: [], // {t, connections, in, out}
    lastOk: 0,
    pollTimer: null,
    pollGen: 0, // bumped to cancel the polls in flight
    page: null, // the current page object {name, update(), leave()}
  };

  // ---------------------------------------------------------------- login

  let loginMessage = '';

  function signOut(message) {
    sessionStorage.removeItem(TOKEN_KEY);
    loginMessage = message || '';
    stopPolling();
    leavePage();
    renderLogin();
  }

  function renderLogin() {
    $nav.hidden = true;
    $topRight.hidden = true;
    clear($main);
    const input = h('input', {
      type: 'password',
      id: 'token',
      name: 'token',
      autocomplete: 'current-password',
      placeholder: 'admin.token',
      required: true,
    });
    const msg = h('p', { class: 'form-error', id: 'login-error', role: 'alert', text: loginMessage, hidden: !loginMessage });
    const button = h('button', { type: 'submit', class: 'btn btn-primary', text: 'Sign in' });
    const form = h(
      'form',
      {
        class: 'card login',
        id: 'login',
        onsubmit: async (e) => {
          e.preventDefault();
          const t = input.value.trim();
          if (!t) return;
          button.disabled = true;
          msg.hidden = true;
          try {
            await api('GET', '/nodes', undefined, t);
            sessionStorage.setItem(TOKEN_KEY, t);
            loginMessage = '';
            start();
          } catch (err) {
            let text = err.message;
            if (err.status === 401) text = `Wrong token: the admin API answered 401 (${err.message}).`;
            else if (err.status === 404) text = 'The admin API is off on this node (admin.token is not set).';
            msg.textContent = text;
            msg.hidden = false;
            button.disabled = false;
            input.select();
          }
        },
      },
      h('h1', { text: 'Sign in' }),
      h('p', { class: 'muted', text: 'The console uses the admin API. Enter the node\u2019s admin token (admin.token, HERALD_ADMIN__TOKEN); it is kept in this tab only.' }),
      h('label', { for: 'token', text: 'Admin token' }),
      input,
      msg,
      button,
    );
    $main.append(h('div', { class: 'login-wrap' }, form));
    input.focus();
  }

  // ---------------------------------------------------------------- polling

  function startPolling() {
    stopPolling();
    poll();
  }
  /** Stops the timer and makes any poll in flight drop its answer (one chain of polls at most). */
  function stopPolling() {
    clearTimeout(state.pollTimer);
    state.pollTimer = null;
    state.pollGen++;
  }

  async function poll() {
    if (!token()) return;
    const gen = state.pollGen;
    const started = Date.now();
    try {
      const [nodes, apps] = await Promise.all([api('GET', '/nodes'), api('GET', '/apps')]);
      if (gen !== state.pollGen) return;
      state.nodes = (nodes && nodes.nodes) || [];
      state.apps = (apps && apps.apps) || [];
      state.appStore = apps && apps.app_store;
      state.readOnly = !!(apps && apps.read_only);
      const sum = (f) => state.apps.reduce((a, x) => a + (Number(x.counts && x.counts[f]) || 0), 0);
      state.samples.push({
        t: Date.now(),
        connections: state.nodes.reduce((a, n) => a + (Number(n.connections) || 0), 0),
        in: sum('messages_in_per_second'),
        out: sum('messages_out_per_second'),
      });
      if (state.samples.length > HISTORY) state.samples.splice(0, state.samples.length - HISTORY);
      state.lastOk = Date.now();
      setLive(true);
      if (state.page && state.page.update) await state.page.update();
    } catch (err) {
      if (!token() || gen !== state.pollGen) return;
      setLive(false, err.message);
    }
    if (!token() || gen !== state.pollGen) return;
    state.pollTimer = setTimeout(poll, Math.max(200, POLL_MS - (Date.now() - started)));
  }

  function setLive(ok, why) {
    $live.classList.toggle('bad', !ok);
    $liveText.textContent = ok ? 'live' : 'offline';
    $live.title = ok ? 'Polling the admin API every 2 s' : why || 'The admin API did not answer';
  }

  // ---------------------------------------------------------------- router

  function leavePage() {
    if (state.page && state.page.leave) state.page.leave();
    state.page = null;
  }

  function route() {
    if (!token()) {
      renderLogin();
      return;
    }
    const hash = location.hash || '#/overview';
    let m;
    leavePage();
    closeModal();
    clear($main);
    if ((m = /^#\/apps\/(.+)$/.exec(hash))) {
      let id;
      try {
        id = decodeURIComponent(m[1]);
      } catch {
        id = m[1];
      }
      state.page = appPage(id);
    } else if (hash === '#/apps') {
      state.page = appsPage();
    } else {
      state.page = overviewPage();
    }
    for (const a of $nav.querySelectorAll('a')) {
      a.classList.toggle('active', a.dataset.page === state.page.nav);
    }
    if (state.page.update && state.lastOk) state.page.update();
  }

  function start() {
    $nav.hidden = false;
    $topRight.hidden = false;
    route();
    startPolling();
  }

  // ---------------------------------------------------------------- shared pieces

  function pageHead(title, sub, ...actions) {
    return h(
      'div',
      { class: 'page-head' },
      h('div', { class: 'page-title' }, h('h1', { text: title }), sub ? h('p', { class: 'muted', text: sub }) : null),
      actions.length ? h('div', { class: 'page-actions' }, actions) : null,
    );
  }

  function stat(label, id) {
    const value = h('div', { class: 'stat-value', id, text: '–' });
    return { el: h('div', { class: 'stat' }, h('div', { class: 'stat-label', text: label }), value), value };
  }

  function card(title, ...children) {
    return h('section', { class: 'card' }, title ? h('h2', { class: 'card-title', text: title }) : null, children);
  }

  function table(headers, opts = {}) {
    const tbody = h('tbody');
    const el = h(
      'div',
      { class: 'table-wrap' },
      h(
        'table',
        { class: `table ${opts.class || ''}`, id: opts.id },
        h('thead', null, h('tr', null, headers.map((x) => h('th', { class: x.num ? 'num' : '', text: x.label ?? x })))),
        tbody,
      ),
    );
    return { el, tbody };
  }

  function pill(text, kind) {
    return h('span', { class: `pill pill-${kind}`, text });
  }

  function notice(kind, ...children) {
    return h('div', { class: `notice notice-${kind}`, role: kind === 'error' ? 'alert' : null }, children);
  }

  function readOnlyReason() {
    const kind = state.appStore && state.appStore.kind ? state.appStore.kind : 'file';
    return `The app store (${kind}) is read-only: apps come from the configuration file. Edit it and reload herald (SIGHUP), or configure app_store.url to manage apps here.`;
  }

  function setText(el, text) {
    const s = String(text);
    if (el.textContent !== s) el.textContent = s;
  }

  // ---------------------------------------------------------------- modal

  let $modal = null;
  function closeModal() {
    if ($modal) {
      $modal.remove();
      $modal = null;
    }
  }
  function modal(title, body, actions, { wide = false } = {}) {
    closeModal();
    const box = h(
      'div',
      { class: `modal ${wide ? 'modal-wide' : ''}`, role: 'dialog', 'aria-modal': 'true', 'aria-label': title },
      h('div', { class: 'modal-head' }, h('h2', { text: title }), h('button', { type: 'button', class: 'btn btn-ghost btn-x', 'aria-label': 'Close', text: '\u00d7', onclick: closeModal })),
      h('div', { class: 'modal-body' }, body),
      actions ? h('div', { class: 'modal-actions' }, actions) : null,
    );
    $modal = h('div', { class: 'overlay', onclick: (e) => e.target === $modal && closeModal() }, box);
    document.body.append($modal);
    const first = box.querySelector('input, textarea, select, .btn-primary, .btn-danger');
    if (first) first.focus();
    return box;
  }
  document.addEventListener('keydown', (e) => {
    if (e.key === 'Escape') closeModal();
  });

  function confirmModal(title, text, label, danger, action) {
    const err = h('p', { class: 'form-error', hidden: true });
    const go = h('button', {
      type: 'button',
      class: `btn ${danger ? 'btn-danger' : 'btn-primary'}`,
      text: label,
      onclick: async () => {
        go.disabled = true;
        try {
          await action();
        } catch (e) {
          err.textContent = e.message;
          err.hidden = false;
          go.disabled = false;
        }
      },
    });
    modal(title, [h('p', { text }), err], [h('button', { type: 'button', class: 'btn', text: 'Cancel', onclick: closeModal }), go]);
  }

  function showSecret(title, appId, secret, intro) {
    const box = h('code', { class: 'secret', id: 'secret-value', text: secret });
    const copied = h('span', { class: 'muted', text: '' });
    modal(
      title,
      [
        intro ? h('p', { text: intro }) : null,
        h('p', { class: 'muted', text: `App ${appId}: this is the only time the secret is shown. Store it now.` }),
        box,
        copied,
      ],
      [
        h('button', {
          type: 'button',
          class: 'btn',
          text: 'Copy',
          onclick: async () => {
            try {
              await navigator.clipboard.writeText(secret);
              copied.textContent = 'Copied.';
            } catch {
              const r = document.createRange();
              r.selectNodeContents(box);
              const sel = getSelection();
              sel.removeAllRanges();
              sel.addRange(r);
              copied.textContent = 'Selected: press Ctrl+C.';
            }
          },
        }),
        h('button', { type: 'button', class: 'btn btn-primary', text: 'Done', onclick: closeModal }),
      ],
    );
  }

  // ---------------------------------------------------------------- chart

  /** Rounds up to 1, 2 or 5 times a power of ten, at least `min`. */
  function niceStep(v, min) {
    if (!(v > min)) return min;
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 5, 10]) if (v <= m * p) return m * p;
    return 10 * p;
  }

  /** A line chart: series [{key, label, color, area}] over state.samples. */
  function chart(series, { format = fmtInt, minStep = 1 } = {}) {
    const holder = h('div', { class: 'chart' });
    const legend = h(
      'div',
      { class: 'legend' },
      series.map((s) => {
        const value = h('strong', { text: '–' });
        s.valueEl = value;
        const sw = h('span', { class: `swatch swatch-${s.color}` });
        return h('span', { class: 'legend-item' }, sw, `${s.label} `, value);
      }),
    );
    function draw() {
      const samples = state.samples;
      const W = Math.max(200, Math.floor(holder.clientWidth || 600));
      const H = 170;
      const padL = 44;
      const padR = 8;
      const padT = 8;
      const padB = 20;
      const top = Math.max(0, ...samples.flatMap((x) => series.map((s) => Number(x[s.key]) || 0)));
      // Four grid steps of a round size, so every label is exact.
      const max = 4 * niceStep(top / 4, minStep);
      const now = Date.now();
      // The last 5 minutes, or less while the page is young (at least one minute).
      const span = Math.min(HISTORY * POLL_MS, Math.max(60000, samples.length ? now - samples[0].t : 0));
      const x = (t) => padL + ((t - (now - span)) / span) * (W - padL - padR);
      const y = (v) => padT + (1 - v / max) * (H - padT - padB);
      const root = svg('svg', { viewBox: `0 0 ${W} ${H}`, width: W, height: H, role: 'img', 'aria-label': series.map((s) => s.label).join(', ') });
      for (let i = 0; i <= 4; i++) {
        const v = (max * i) / 4;
        const yy = Math.round(y(v)) + 0.5;
        root.append(svg('line', { x1: padL, x2: W - padR, y1: yy, y2: yy, class: i === 0 ? 'axis' : 'grid' }));
        root.append(svg('text', { x: padL - 6, y: yy + 4, 'text-anchor': 'end', class: 'tick', text: format(v) }));
      }
      root.append(svg('text', { x: padL, y: H - 4, class: 'tick', text: `${Math.round(span / 60000)} min ago` }));
      root.append(svg('text', { x: W - padR, y: H - 4, 'text-anchor': 'end', class: 'tick', text: 'now' }));
      for (const s of series) {
        const pts = samples.map((p) => [x(p.t), y(Number(p[s.key]) || 0)]).filter(([px]) => px >= padL - 1);
        if (!pts.length) continue;
        const line = pts.map(([px, py], i) => `${i ? 'L' : 'M'}${px.toFixed(1)},${py.toFixed(1)}`).join('');
        if (s.area && pts.length > 1) {
          const base = y(0).toFixed(1);
          root.append(svg('path', { d: `${line}L${pts[pts.length - 1][0].toFixed(1)},${base}L${pts[0][0].toFixed(1)},${base}Z`, class: `area area-${s.color}` }));
        }
        root.append(svg('path', { d: line, class: `line line-${s.color}` }));
        const [lx, ly] = pts[pts.length - 1];
        root.append(svg('circle', { cx: lx.toFixed(1), cy: ly.toFixed(1), r: 3, class: `dot-${s.color}` }));
        s.valueEl.textContent = format(samples[samples.length - 1][s.key]);
      }
      if (!samples.length) root.append(svg('text', { x: W / 2, y: H / 2, 'text-anchor': 'middle', class: 'tick', text: 'waiting for data\u2026' }));
      clear(holder);
      holder.append(root);
    }
    return { el: h('div', null, legend, holder), draw };
  }

  let resizeTimer = null;
  window.addEventListener('resize', () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(() => state.page && state.page.resize && state.page.resize(), 100);
  });

  // ---------------------------------------------------------------- overview

  function overviewPage() {
    const sNodes = stat('Nodes', 'stat-nodes');
    const sConn = stat('Connections', 'stat-connections');
    const sApps = stat('Apps', 'stat-apps');
    const sChan = stat('Occupied channels', 'stat-channels');
    const sIn = stat('Messages in / s', 'stat-in');
    const sOut = stat('Messages out / s', 'stat-out');
    const connChart = chart([{ key: 'connections', label: 'Connections', color: 'blue', area: true }]);
    const msgChart = chart(
      [
        { key: 'in', label: 'In / s', color: 'green' },
        { key: 'out', label: 'Out / s', color: 'amber' },
      ],
      { format: fmtRate, minStep: 0.5 },
    );
    const nodes = table(['Node', { label: 'Connections', num: true }, { label: 'Apps', num: true }, { label: 'Uptime', num: true }, { label: 'Last seen', num: true }], { id: 'nodes' });
    const apps = table(['App', 'Key', { label: 'Connections', num: true }, { label: 'Channels', num: true }, { label: 'In / s', num: true }, { label: 'Out / s', num: true }], { id: 'overview-apps' });

    $main.append(
      pageHead('Overview', 'The cluster as this node sees it, refreshed every 2 s.'),
      h('div', { class: 'stats' }, [sNodes, sConn, sApps, sChan, sIn, sOut].map((s) => s.el)),
      h('div', { class: 'grid-2' }, card('Connections', connChart.el), card('Messages per second', msgChart.el)),
      card('Nodes', nodes.el),
      card('Apps', apps.el),
    );

    function update() {
      const sum = (f) => state.apps.reduce((a, x) => a + (Number(x.counts && x.counts[f]) || 0), 0);
      const last = state.samples[state.samples.length - 1] || { connections: 0 };
      setText(sNodes.value, fmtInt(state.nodes.length));
      setText(sConn.value, fmtInt(last.connections));
      setText(sApps.value, fmtInt(state.apps.length));
      setText(sChan.value, fmtInt(sum('occupied_channels')));
      setText(sIn.value, fmtRate(sum('messages_in_per_second')));
      setText(sOut.value, fmtRate(sum('messages_out_per_second')));
      connChart.draw();
      msgChart.draw();

      syncRows(nodes.tbody, state.nodes, {
        key: (n) => n.id,
        shape: (n) => String(!!n.this_node),
        cols: 5,
        empty: 'No nodes.',
        build: (n) =>
          h(
            'tr',
            null,
            h('td', { class: 'mono' }, n.id, n.this_node ? h('span', { class: 'pill pill-blue pill-inline', text: 'this node' }) : null),
            h('td', { class: 'num', text: fmtInt(n.connections) }),
            h('td', { class: 'num', text: fmtInt(Object.values(n.apps || {}).filter((c) => c > 0).length) }),
            h('td', { class: 'num', text: n.started_at_ms ? fmtDuration(Date.now() - n.started_at_ms) : '–' }),
            h('td', { class: 'num', text: n.last_seen_ms ? fmtAgo(n.last_seen_ms) : '–' }),
          ),
      });

      const sorted = [...state.apps].sort((a, b) => (b.counts?.connections || 0) - (a.counts?.connections || 0) || String(a.id).localeCompare(String(b.id)));
      syncRows(apps.tbody, sorted, {
        key: (a) => a.id,
        shape: (a) => String(a.enabled !== false),
        cols: 6,
        empty: 'No apps.',
        build: (a) =>
          h(
            'tr',
            null,
            h('td', null, h('a', { href: `#/apps/${enc(a.id)}`, class: 'mono', text: a.id }), a.enabled === false ? h('span', { class: 'pill pill-gray pill-inline', text: 'disabled' }) : null),
            h('td', { class: 'mono muted', text: a.key }),
            h('td', { class: 'num', text: fmtInt(a.counts?.connections) }),
            h('td', { class: 'num', text: fmtInt(a.counts?.occupied_channels) }),
            h('td', { class: 'num', text: fmtRate(a.counts?.messages_in_per_second) }),
            h('td', { class: 'num', text: fmtRate(a.counts?.messages_out_per_second) }),
          ),
      });
    }
    return {
      nav: 'overview',
      update,
      resize: () => {
        connChart.draw();
        msgChart.draw();
      },
    };
  }

  function emptyRow(cols, text) {
    return h('tr', { class: 'empty' }, h('td', { colspan: cols, text }));
  }

  /**
   * Shows `items` in `tbody`, one row per `key`. A row whose `shape` (what changes its
   * structure: buttons, pills) is unchanged is kept and only its text refreshed, so the polled
   * tables do not flicker and a click is never lost to a redraw.
   */
  function syncRows(tbody, items, { key, build, shape = () => '', cols, empty }) {
    const cache = tbody.rowCache || (tbody.rowCache = new Map());
    const rows = [];
    const seen = new Set();
    for (const item of items) {
      const k = key(item);
      seen.add(k);
      const sig = shape(item);
      const fresh = build(item);
      let entry = cache.get(k);
      if (!entry || entry.sig !== sig) {
        entry = { tr: fresh, sig };
        cache.set(k, entry);
      } else {
        patchRow(entry.tr, fresh);
      }
      rows.push(entry.tr);
    }
    for (const k of [...cache.keys()]) if (!seen.has(k)) cache.delete(k);
    if (!rows.length) {
      if (!tbody.emptyRow || tbody.emptyRow.textContent !== empty) tbody.emptyRow = emptyRow(cols, empty);
      rows.push(tbody.emptyRow);
    }
    rows.forEach((tr, i) => {
      if (tbody.children[i] !== tr) tbody.insertBefore(tr, tbody.children[i] || null);
    });
    while (tbody.children.length > rows.length) tbody.lastElementChild.remove();
  }

  /** Copies `fresh`'s texts into `row` (cells with elements are replaced when they differ). */
  function patchRow(row, fresh) {
    if (row.className !== fresh.className) row.className = fresh.className;
    const oc = [...row.cells];
    const fc = [...fresh.cells];
    for (let i = 0; i < fc.length && i < oc.length; i++) {
      const o = oc[i];
      const f = fc[i];
      if (!o.children.length && !f.children.length) setText(o, f.textContent);
      else if (o.textContent !== f.textContent) row.replaceChild(f, o);
    }
  }

  // ---------------------------------------------------------------- apps

  function appsPage() {
    const roBanner = h('div', { id: 'read-only' });
    const storeNote = h('div');
    const createBtn = h('button', { type: 'button', class: 'btn btn-primary', id: 'new-app', text: 'New app', onclick: () => createModal() });
    const list = table(['App', 'Key', 'Status', { label: 'Connections', num: true }, { label: 'Channels', num: true }, { label: 'In / s', num: true }, { label: 'Out / s', num: true }, ''], { id: 'apps', class: 'apps-table' });
    $main.append(pageHead('Apps', 'Every app this node serves, with live counts across the cluster.', createBtn), roBanner, storeNote, card(null, list.el));

    function update() {
      createBtn.disabled = state.readOnly;
      createBtn.title = state.readOnly ? readOnlyReason() : '';
      clear(roBanner);
      if (state.readOnly) roBanner.append(notice('info', h('strong', { text: 'Read-only. ' }), readOnlyReason()));
      clear(storeNote);
      if (state.appStore && state.appStore.ok === false) {
        storeNote.append(notice('error', h('strong', { text: 'App store unreachable. ' }), state.appStore.error || '', ' The known apps keep working; changes wait until it is back.'));
      }
      const apps = [...state.apps].sort((a, b) => String(a.id).localeCompare(String(b.id), undefined, { numeric: true }));
      syncRows(list.tbody, apps, {
        key: (a) => a.id,
        shape: (a) => `${a.enabled !== false}|${state.readOnly}|${a.key}`,
        cols: 8,
        empty: 'No apps yet.',
        build: appRow,
      });
    }

    function appRow(app) {
      const ro = state.readOnly;
      const why = ro ? readOnlyReason() : null;
      const a = app;
      // The app as last polled, when a button is clicked.
      const cur = () => state.apps.find((x) => x.id === app.id) || app;
      const act = (label, cls, onclick) => h('button', { type: 'button', class: `btn btn-sm ${cls}`, text: label, disabled: ro, title: why, onclick });
      return h(
        'tr',
        { 'data-app': a.id },
        h('td', null, h('a', { href: `#/apps/${enc(a.id)}`, class: 'mono strong', text: a.id })),
        h('td', { class: 'mono muted', text: a.key }),
        h('td', null, a.enabled === false ? pill('disabled', 'gray') : pill('enabled', 'green')),
        h('td', { class: 'num conn-cell', text: fmtInt(a.counts?.connections) }),
        h('td', { class: 'num', text: fmtInt(a.counts?.occupied_channels) }),
        h('td', { class: 'num', text: fmtRate(a.counts?.messages_in_per_second) }),
        h('td', { class: 'num', text: fmtRate(a.counts?.messages_out_per_second) }),
        h(
          'td',
          { class: 'actions' },
          act('Edit', '', () => editModal(cur())),
          act('Rotate secret', '', () => rotateModal(cur())),
          a.enabled === false ? act('Enable', '', () => setEnabled(cur(), true)) : act('Disable', '', () => setEnabled(cur(), false)),
          act('Delete', 'btn-danger-ghost', () => deleteModal(cur())),
        ),
      );
    }
    return { nav: 'apps', update };
  }

  async function refreshNow() {
    stopPolling();
    await poll();
  }

  function field(label, input, hint) {
    const id = input.id || `f-${Math.random().toString(36).slice(2)}`;
    input.id = id;
    return h('div', { class: 'field' }, h('label', { for: id, text: label }), input, hint ? h('p', { class: 'hint', text: hint }) : null);
  }
  function checkField(label, input, hint) {
    return h('div', { class: 'field field-check' }, h('label', null, input, ' ', label), hint ? h('p', { class: 'hint', text: hint }) : null);
  }

  function createModal() {
    const id = h('input', { id: 'create-id', placeholder: 'generated', autocomplete: 'off', spellcheck: 'false' });
    const key = h('input', { id: 'create-key', placeholder: 'generated', autocomplete: 'off', spellcheck: 'false' });
    const secret = h('input', { id: 'create-secret', placeholder: 'generated', autocomplete: 'off', spellcheck: 'false' });
    const enabled = h('input', { type: 'checkbox', checked: true });
    const clientEvents = h('input', { type: 'checkbox', checked: true });
    const err = h('p', { class: 'form-error', id: 'create-error', role: 'alert', hidden: true });
    const go = h('button', { type: 'submit', class: 'btn btn-primary', id: 'create-submit', text: 'Create app' });
    const form = h(
      'form',
      {
        id: 'create-form',
        onsubmit: async (e) => {
          e.preventDefault();
          const body = { enabled: enabled.checked, client_events: clientEvents.checked };
          for (const [k, el] of [['id', id], ['key', key], ['secret', secret]]) {
            if (el.value.trim()) body[k] = el.value.trim();
          }
          go.disabled = true;
          err.hidden = true;
          try {
            const res = await api('POST', '/apps', body);
            const app = res && res.app ? res.app : {};
            await refreshNow();
            showSecret('App created', app.id, res.secret, `Key: ${app.key}`);
          } catch (ex) {
            err.textContent = `${ex.message}${ex.status ? ` (${ex.status})` : ''}`;
            err.hidden = false;
            go.disabled = false;
          }
        },
      },
      h('p', { class: 'muted', text: 'Leave id, key or secret empty to have herald generate them.' }),
      h('div', { class: 'form-grid' }, field('App id', id), field('Key', key), field('Secret', secret)),
      checkField('Enabled', enabled),
      checkField('Client events', clientEvents, 'Let clients send client-* events on private and presence channels.'),
      err,
      h('div', { class: 'modal-actions' }, h('button', { type: 'button', class: 'btn', text: 'Cancel', onclick: closeModal }), go),
    );
    modal('New app', form, null);
  }

  function editModal(a) {
    const num = (v, idn) => h('input', { type: 'number', min: '0', step: '1', value: String(v ?? 0), id: idn });
    const enabled = h('input', { type: 'checkbox', checked: a.enabled !== false });
    const clientEvents = h('input', { type: 'checkbox', checked: !!a.client_events });
    const subCount = h('input', { type: 'checkbox', checked: !!a.subscription_count });
    const maxConn = num(a.max_connections, 'edit-max-connections');
    const maxMsg = num(a.max_message_size, 'edit-max-message-size');
    const maxCe = num(a.max_client_events_per_second, 'edit-max-ce');
    const maxPm = num(a.max_presence_members, 'edit-max-pm');
    const origins = h('textarea', { rows: '3', spellcheck: 'false', placeholder: 'https://example.com\n*.example.com', value: (a.allowed_origins || []).join('\n') });
    const hooks = h('textarea', {
      rows: '5',
      class: 'mono',
      spellcheck: 'false',
      placeholder: '[{"url": "https://example.com/pusher/webhooks", "event_types": ["channel_occupied"]}]',
      value: a.webhooks && a.webhooks.length ? JSON.stringify(a.webhooks, null, 2) : '',
    });
    const err = h('p', { class: 'form-error', role: 'alert', hidden: true });
    const go = h('button', { type: 'submit', class: 'btn btn-primary', text: 'Save' });
    const form = h(
      'form',
      {
        id: 'edit-form',
        onsubmit: async (e) => {
          e.preventDefault();
          err.hidden = true;
          let webhooks = [];
          if (hooks.value.trim()) {
            try {
              webhooks = JSON.parse(hooks.value);
              if (!Array.isArray(webhooks)) throw new Error('not a list');
            } catch (ex) {
              err.textContent = `Webhooks must be a JSON list of targets (${ex.message}).`;
              err.hidden = false;
              return;
            }
          }
          const body = {
            enabled: enabled.checked,
            client_events: clientEvents.checked,
            subscription_count: subCount.checked,
            max_connections: Number(maxConn.value) || 0,
            max_message_size: Number(maxMsg.value) || 0,
            max_client_events_per_second: Number(maxCe.value) || 0,
            max_presence_members: Number(maxPm.value) || 0,
            allowed_origins: origins.value.split(/\s*\n\s*/).map((s) => s.trim()).filter(Boolean),
            webhooks,
          };
          go.disabled = true;
          try {
            await api('PATCH', `/apps/${enc(a.id)}`, body);
            closeModal();
            await refreshNow();
          } catch (ex) {
            err.textContent = `${ex.message}${ex.status ? ` (${ex.status})` : ''}`;
            err.hidden = false;
            go.disabled = false;
          }
        },
      },
      h('div', { class: 'form-grid' }, checkField('Enabled', enabled, 'A disabled app refuses connections (4003) and API requests.'), checkField('Client events', clientEvents), checkField('Subscription count', subCount, 'Send pusher_internal:subscription_count.')),
      h(
        'div',
        { class: 'form-grid' },
        field('Max connections', maxConn, '0 = unlimited'),
        field('Max message size (bytes)', maxMsg),
        field('Client events / s per socket', maxCe),
        field('Max presence members', maxPm),
      ),
      field('Allowed origins', origins, 'One per line; empty allows any origin.'),
      field('Webhooks (JSON)', hooks, 'A list of {url, event_types, channel_prefix, channel_suffix, headers}.'),
      err,
      h('div', { class: 'modal-actions' }, h('button', { type: 'button', class: 'btn', text: 'Cancel', onclick: closeModal }), go),
    );
    modal(`Edit app ${a.id}`, form, null, { wide: true });
  }

  function rotateModal(a) {
    confirmModal('Rotate secret', `App ${a.id} gets a new secret now. Signatures made with the old secret (server SDKs, channel authorization) fail from then on.`, 'Rotate secret', true, async () => {
      const res = await api('POST', `/apps/${enc(a.id)}/rotate-secret`);
      showSecret('New secret', a.id, res.secret);
    });
  }

  async function setEnabled(a, on) {
    const doIt = async () => {
      await api('PATCH', `/apps/${enc(a.id)}`, { enabled: on });
      closeModal();
      await refreshNow();
    };
    if (on) {
      try {
        await doIt();
      } catch (e) {
        modal('Could not enable', h('p', { class: 'form-error', text: e.message }), [h('button', { type: 'button', class: 'btn', text: 'Close', onclick: closeModal })]);
      }
    } else {
      confirmModal('Disable app', `App ${a.id} refuses new connections and API requests, and its open sockets are closed (4003).`, 'Disable', true, doIt);
    }
  }

  function deleteModal(a) {
    confirmModal('Delete app', `Delete app ${a.id} (key ${a.key})? Its sockets are closed (4003) and its settings are gone.`, 'Delete app', true, async () => {
      await api('DELETE', `/apps/${enc(a.id)}`);
      closeModal();
      if (location.hash !== '#/apps') location.hash = '#/apps';
      await refreshNow();
    });
  }

  // ---------------------------------------------------------------- one app

  function appPage(id) {
    let app = null;
    let selected = null; // presence channel shown
    const stopped = { v: false };
    const title = h('h1', { text: `App ${id}` });
    const sub = h('p', { class: 'muted' });
    const badge = h('span');
    const sConn = stat('Connections');
    const sChan = stat('Occupied channels');
    const sIn = stat('Messages in / s');
    const sOut = stat('Messages out / s');
    const problem = h('div');
    const editBtn = h('button', { type: 'button', class: 'btn', text: 'Edit', onclick: () => app && editModal(app) });
    const rotateBtn = h('button', { type: 'button', class: 'btn', text: 'Rotate secret', onclick: () => app && rotateModal(app) });
    const toggleBtn = h('button', { type: 'button', class: 'btn', text: 'Disable', onclick: () => app && setEnabled(app, app.enabled === false) });
    const deleteBtn = h('button', { type: 'button', class: 'btn btn-danger-ghost', text: 'Delete', onclick: () => app && deleteModal(app) });
    const writeBtns = [editBtn, rotateBtn, toggleBtn, deleteBtn];

    const channels = table(['Channel', { label: 'Subscribers', num: true }, { label: 'Users', num: true }], { id: 'channels', class: 'clickable' });
    const members = h('div', { id: 'members' });

    // Test event form
    const tChannel = h('input', { id: 'test-channel', value: 'test-channel', spellcheck: 'false', required: true });
    const tEvent = h('input', { id: 'test-event', value: 'test-event', spellcheck: 'false', required: true });
    const tData = h('textarea', { id: 'test-data', rows: '3', class: 'mono', spellcheck: 'false', value: '{"hello": "world"}' });
    const tSocket = h('input', { id: 'test-socket', placeholder: 'optional: exclude this socket', spellcheck: 'false' });
    const tResult = h('p', { class: 'hint', id: 'test-result', role: 'status' });
    const tSend = h('button', { type: 'submit', class: 'btn btn-primary', id: 'test-send', text: 'Send event' });
    const testForm = h(
      'form',
      {
        id: 'test-form',
        onsubmit: async (e) => {
          e.preventDefault();
          const body = { name: tEvent.value.trim(), data: tData.value, channel: tChannel.value.trim() };
          if (tSocket.value.trim()) body.socket_id = tSocket.value.trim();
          tSend.disabled = true;
          tResult.classList.remove('form-error');
          try {
            await api('POST', `/apps/${enc(id)}/events`, body);
            tResult.textContent = `Sent ${body.name} on ${body.channel} at ${fmtClock(Date.now())}.`;
          } catch (ex) {
            tResult.textContent = `${ex.message}${ex.status ? ` (${ex.status})` : ''}`;
            tResult.classList.add('form-error');
          }
          tSend.disabled = false;
        },
      },
      h('div', { class: 'form-grid form-grid-2' }, field('Channel', tChannel), field('Event', tEvent)),
      field('Data', tData, 'Sent as the event\u2019s data string, as a signed HTTP API publish would.'),
      field('Socket id', tSocket),
      h('div', { class: 'form-row' }, tSend, tResult),
    );

    const log = eventLog(id);

    $main.append(
      h(
        'div',
        { class: 'page-head' },
        h('div', { class: 'page-title' }, h('p', { class: 'crumbs' }, h('a', { href: '#/apps', text: 'Apps' }), ' / '), h('div', { class: 'title-row' }, title, badge), sub),
        h('div', { class: 'page-actions' }, writeBtns),
      ),
      problem,
      h('div', { class: 'stats stats-4' }, [sConn, sChan, sIn, sOut].map((s) => s.el)),
      h('div', { class: 'grid-2' }, card('Occupied channels', channels.el, members), card('Send a test event', testForm)),
      log.el,
    );

    let membersView = null; // {name, count, tbody} of the channel shown

    async function loadMembers() {
      if (!selected) {
        membersView = null;
        clear(members);
        return;
      }
      const name = selected;
      let ch;
      try {
        ch = await api('GET', `/apps/${enc(id)}/channels/${enc(name)}`);
      } catch (e) {
        membersView = null;
        clear(members);
        members.append(notice('error', e.message));
        return;
      }
      if (stopped.v || name !== selected) return;
      const list = (ch && ch.members) || [];
      if (!membersView || membersView.name !== name) {
        const count = h('span');
        const t = table(['User id', 'User info'], { id: 'members-table' });
        membersView = { name, count, tbody: t.tbody };
        clear(members);
        members.append(
          h(
            'div',
            { class: 'members-head' },
            h('h3', null, 'Members of ', h('span', { class: 'mono', text: name }), ' ', count),
            h('button', {
              type: 'button',
              class: 'btn btn-ghost btn-sm',
              text: 'Close',
              onclick: () => {
                selected = null;
                membersView = null;
                clear(members);
                for (const r of channels.tbody.children) r.classList.remove('selected');
              },
            }),
          ),
          t.el,
        );
      }
      setText(membersView.count, `(${list.length})`);
      syncRows(membersView.tbody, list, {
        key: (m) => String(m.user_id),
        cols: 2,
        empty: ch && ch.occupied === false ? 'Channel no longer occupied.' : 'No members.',
        build: (m) =>
          h(
            'tr',
            null,
            h('td', { class: 'mono', text: m.user_id }),
            h('td', { class: 'mono small', text: m.user_info === undefined || m.user_info === null ? '' : JSON.stringify(m.user_info) }),
          ),
      });
    }

    async function update() {
      const a = state.apps.find((x) => x.id === id);
      if (!a) {
        clear(problem);
        problem.append(notice('error', `No app with id ${id}.`, ' ', h('a', { href: '#/apps', text: 'Back to apps' })));
        return;
      }
      app = a;
      clear(problem);
      setText(sub, `Key ${a.key}`);
      clear(badge);
      badge.append(a.enabled === false ? pill('disabled', 'gray') : pill('enabled', 'green'));
      for (const b of writeBtns) {
        b.disabled = state.readOnly;
        b.title = state.readOnly ? readOnlyReason() : '';
      }
      setText(toggleBtn, a.enabled === false ? 'Enable' : 'Disable');
      setText(sConn.value, fmtInt(a.counts?.connections));
      setText(sChan.value, fmtInt(a.counts?.occupied_channels));
      setText(sIn.value, fmtRate(a.counts?.messages_in_per_second));
      setText(sOut.value, fmtRate(a.counts?.messages_out_per_second));
      let res;
      try {
        res = await api('GET', `/apps/${enc(id)}/channels`);
      } catch (e) {
        return;
      }
      if (stopped.v) return;
      syncRows(channels.tbody, (res && res.channels) || [], {
        key: (c) => c.name,
        cols: 3,
        empty: 'No occupied channels.',
        build: (c) => {
          const presence = String(c.name).startsWith('presence-');
          const row = h(
            'tr',
            { class: `${presence ? 'link-row' : ''}${c.name === selected ? ' selected' : ''}`, title: presence ? 'Show members' : null },
            h('td', { class: 'mono' }, c.name, presence ? h('span', { class: 'pill pill-violet pill-inline', text: 'presence' }) : null),
            h('td', { class: 'num', text: fmtInt(c.subscription_count) }),
            h('td', { class: 'num', text: c.user_count === undefined || c.user_count === null ? '' : fmtInt(c.user_count) }),
          );
          if (presence) {
            row.tabIndex = 0;
            const open = () => {
              selected = c.name;
              for (const r of channels.tbody.children) r.classList.toggle('selected', r === row);
              loadMembers();
            };
            row.addEventListener('click', open);
            row.addEventListener('keydown', (e) => (e.key === 'Enter' || e.key === ' ') && (e.preventDefault(), open()));
          }
          return row;
        },
      });
      if (selected) loadMembers();
    }

    return {
      nav: 'apps',
      update,
      leave: () => {
        stopped.v = true;
        log.stop();
      },
    };
  }

  // ---------------------------------------------------------------- live event log

  const TYPE_LABEL = {
    connection_opened: 'connected',
    connection_closed: 'disconnected',
    subscribed: 'subscribed',
    unsubscribed: 'unsubscribed',
    published: 'published',
    client_event: 'client event',
    webhook: 'webhook',
    limit_hit: 'limit',
    sampled: 'sampled',
  };
  const TYPE_COLOR = {
    connection_opened: 'green',
    connection_closed: 'gray',
    subscribed: 'blue',
    unsubscribed: 'gray',
    published: 'violet',
    client_event: 'teal',
    webhook: 'amber',
    limit_hit: 'red',
    sampled: 'amber',
  };

  function details(r) {
    switch (r.type) {
      case 'connection_closed':
        return `code ${r.code}${r.reason ? ` \u00b7 ${r.reason}` : ''}`;
      case 'subscribed':
        return r.user_id ? `user ${r.user_id}` : '';
      case 'published':
        return `${fmtBytes(r.size)} \u00b7 reached ${fmtInt(r.reached)}${r.excluded_socket_id ? ` \u00b7 except ${r.excluded_socket_id}` : ''}`;
      case 'client_event':
        return fmtBytes(r.size);
      case 'webhook':
        return `${(r.events || []).join(', ')} \u00b7 ${r.ok ? 'ok' : `failed${r.error ? `: ${r.error}` : ''}`}`;
      case 'limit_hit':
        return r.limit || '';
      case 'sampled':
        return `${fmtInt(r.dropped)} records left out (busy)`;
      default:
        return '';
    }
  }

  function eventLog(appId) {
    const records = []; // newest first
    let paused = false;
    let pendingWhilePaused = 0;
    let queue = []; // arrived, not yet drawn
    let frame = 0;
    let controller = null;
    let stopped = false;
    let retry = 0;
    let sampledTotal = 0;

    const fChannel = h('input', { id: 'filter-channel', type: 'search', placeholder: 'Channel', spellcheck: 'false', 'aria-label': 'Filter by channel' });
    const fEvent = h('input', { id: 'filter-event', type: 'search', placeholder: 'Event name', spellcheck: 'false', 'aria-label': 'Filter by event name' });
    const fSocket = h('input', { id: 'filter-socket', type: 'search', placeholder: 'Socket id', spellcheck: 'false', 'aria-label': 'Filter by socket id' });
    const pauseBtn = h('button', { type: 'button', class: 'btn btn-sm', id: 'log-pause', text: 'Pause' });
    const clearBtn = h('button', { type: 'button', class: 'btn btn-sm btn-ghost', id: 'log-clear', text: 'Clear' });
    const status = h('span', { class: 'log-status', id: 'log-status', text: 'connecting\u2026' });
    const sampledNote = h('div', { id: 'log-sampled', hidden: true });
    const pausedNote = h('div', { id: 'log-paused', hidden: true });
    const count = h('span', { class: 'muted small', id: 'log-count' });
    const t = table(['Time', 'Type', 'Channel', 'Event', 'Socket', 'Details', 'Node'], { id: 'log', class: 'log-table' });

    for (const f of [fChannel, fEvent, fSocket]) f.addEventListener('input', () => redraw());
    pauseBtn.addEventListener('click', () => {
      paused = !paused;
      pauseBtn.textContent = paused ? 'Resume' : 'Pause';
      pauseBtn.classList.toggle('btn-primary', paused);
      if (!paused) {
        pendingWhilePaused = 0;
        redraw();
      }
      notePaused();
    });
    clearBtn.addEventListener('click', () => {
      records.length = 0;
      queue = [];
      pendingWhilePaused = 0;
      sampledTotal = 0;
      sampledNote.hidden = true;
      redraw();
      notePaused();
    });

    const el = h(
      'section',
      { class: 'card log-card' },
      h('div', { class: 'log-head' }, h('h2', { class: 'card-title', text: 'Live events' }), status, count),
      h('div', { class: 'log-tools' }, fChannel, fEvent, fSocket, h('div', { class: 'log-buttons' }, pauseBtn, clearBtn)),
      sampledNote,
      pausedNote,
      t.el,
    );

    function matches(r) {
      const fc = fChannel.value.trim().toLowerCase();
      const fe = fEvent.value.trim().toLowerCase();
      const fs = fSocket.value.trim().toLowerCase();
      if (fc && !String(r.channel ?? '').toLowerCase().includes(fc)) return false;
      if (fe && !String(r.event ?? '').toLowerCase().includes(fe)) return false;
      if (fs && !(String(r.socket_id ?? '').toLowerCase().includes(fs) || String(r.excluded_socket_id ?? '').toLowerCase().includes(fs))) return false;
      return true;
    }

    function row(r) {
      if (r.row) return r.row;
      const type = String(r.type);
      r.row = h(
        'tr',
        { class: `log-${type}` },
        h('td', { class: 'mono small nowrap', text: r.time_ms ? fmtClock(r.time_ms) : '' }),
        h('td', null, pill(TYPE_LABEL[type] || type, TYPE_COLOR[type] || 'gray')),
        h('td', { class: 'mono', text: r.channel ?? '' }),
        h('td', { class: 'mono', text: r.event ?? '' }),
        h('td', { class: 'mono small', text: r.socket_id ?? '' }),
        h('td', { class: 'small', text: details(r) }),
        h('td', { class: 'mono small muted', text: r.node ?? '' }),
      );
      return r.row;
    }

    function redraw() {
      clear(t.tbody);
      const frag = document.createDocumentFragment();
      let shown = 0;
      for (const r of records) {
        if (matches(r)) {
          frag.append(row(r));
          shown++;
        }
      }
      t.tbody.append(frag);
      if (!shown) t.tbody.append(emptyRow(7, records.length ? 'No event matches the filters.' : 'Waiting for events\u2026'));
      setText(count, `${fmtInt(shown)} of ${fmtInt(records.length)} shown (last ${LOG_MAX} kept)`);
    }

    function notePaused() {
      clear(pausedNote);
      pausedNote.hidden = !paused;
      if (paused) pausedNote.append(notice('info', h('strong', { text: 'Paused. ' }), `${fmtInt(pendingWhilePaused)} new event${pendingWhilePaused === 1 ? '' : 's'} since (the newest ${LOG_MAX} are kept).`));
    }

    function flush() {
      frame = 0;
      if (!queue.length) return;
      const batch = queue;
      queue = [];
      // Newest first: the batch arrived oldest first.
      for (const r of batch) records.unshift(r);
      const dropped = records.length > LOG_MAX ? records.splice(LOG_MAX) : [];
      if (paused) {
        pendingWhilePaused += batch.length;
        notePaused();
        return;
      }
      const empty = t.tbody.querySelector('tr.empty');
      if (empty) empty.remove();
      const frag = document.createDocumentFragment();
      for (let i = batch.length - 1; i >= 0; i--) {
        const r = batch[i];
        if (matches(r)) frag.append(row(r));
      }
      t.tbody.prepend(frag);
      for (const r of dropped) if (r.row && r.row.parentNode) r.row.remove();
      let shown = t.tbody.querySelectorAll('tr:not(.empty)').length;
      if (!shown && !t.tbody.firstChild) {
        t.tbody.append(emptyRow(7, 'No event matches the filters.'));
        shown = 0;
      }
      setText(count, `${fmtInt(shown)} of ${fmtInt(records.length)} shown (last ${LOG_MAX} kept)`);
    }

    function onRecord(r) {
      if (!r || typeof r !== 'object') return;
      if (typeof r.time_ms !== 'number') r.time_ms = Date.now();
      if (r.type === 'hello') {
        setText(status, `live from node ${r.node ?? ''}`);
        status.className = 'log-status ok';
        return;
      }
      if (r.type === 'sampled') {
        sampledTotal += Number(r.dropped) || 0;
        sampledNote.hidden = false;
        clear(sampledNote);
        sampledNote.append(notice('warn', h('strong', { text: 'Sampled. ' }), `The stream is busy: ${fmtInt(sampledTotal)} records were left out so far. What you see is a sample.`));
      }
      queue.push(r);
      if (queue.length > LOG_MAX) queue.splice(0, queue.length - LOG_MAX);
      if (!frame) frame = requestAnimationFrame(flush);
    }

    async function connect() {
      while (!stopped && token()) {
        controller = new AbortController();
        try {
          const res = await fetch(`${API}/apps/${enc(appId)}/events`, {
            headers: { Authorization: `Bearer ${token()}`, Accept: 'text/event-stream' },
            signal: controller.signal,
            cache: 'no-store',
          });
          if (res.status === 401) {
            signOut('The admin API refused the token (401): sign in again.');
            return;
          }
          if (res.status === 404) {
            setText(status, 'no such app on this node');
            status.className = 'log-status bad';
            return;
          }
          if (!res.ok || !res.body) {
            let msg = `${res.status} ${res.statusText}`;
            try {
              const j = await res.json();
              if (j && j.error) msg = j.error;
            } catch {
              /* not JSON */
            }
            throw new Error(msg);
          }
          retry = 0;
          setText(status, 'live');
          status.className = 'log-status ok';
          const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
          let buf = '';
          for (;;) {
            const { value, done } = await reader.read();
            if (done) break;
            buf += value;
            let at;
            while ((at = buf.search(/\r?\n\r?\n/)) >= 0) {
              const block = buf.slice(0, at);
              buf = buf.slice(at + (buf[at] === '\r' ? 4 : 2));
              const data = block
                .split(/\r?\n/)
                .filter((l) => l.startsWith('data:'))
                .map((l) => l.slice(l[5] === ' ' ? 6 : 5))
                .join('\n');
              if (!data) continue;
              try {
                onRecord(JSON.parse(data));
              } catch {
                /* a malformed record is skipped */
              }
            }
            if (buf.length > 1 << 20) buf = ''; // never grow without bound
          }
          if (stopped) return;
          throw new Error('stream ended');
        } catch (e) {
          if (stopped) return;
          retry = Math.min(retry + 1, 5);
          setText(status, `reconnecting (${e.message || e})\u2026`);
          status.className = 'log-status bad';
          await new Promise((r) => setTimeout(r, retry * 1000));
        }
      }
    }

    redraw();
    connect();
    return {
      el,
      stop: () => {
        stopped = true;
        if (controller) controller.abort();
        if (frame) cancelAnimationFrame(frame);
      },
    };
  }

  // ---------------------------------------------------------------- boot

  document.getElementById('logout').addEventListener('click', () => signOut(''));
  window.addEventListener('hashchange', () => token() && route());
  if (token()) start();
  else renderLogin();
})();
