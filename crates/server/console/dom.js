// Small DOM helpers shared by the views: element building, tables, empty and error
// states, badges and a confirmation dialog. Text always goes in as text nodes, never
// as HTML, so nothing an API answer holds can run as markup.

import { ApiError } from './api.js';

/** h('a', {href: '#/x', class: 'y', onclick}, 'text', child…) */
export function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith('on')) node.addEventListener(name.slice(2), value);
    else if (name === 'dataset') Object.assign(node.dataset, value);
    else node.setAttribute(name, value === true ? '' : value);
  }
  append(node, children);
  return node;
}

function append(node, children) {
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** Replaces a node's children. */
export function fill(node, ...children) {
  node.replaceChildren();
  append(node, children);
  return node;
}

/**
 * A table: `columns` = [{title, cell: (row) => content, class?}]. An empty `rows`
 * shows `empty` instead.
 */
export function table(columns, rows, { empty = 'Nothing to show.', rowAttrs } = {}) {
  if (!rows.length) return emptyState(empty);
  return h('div', { class: 'table-wrap' },
    h('table', {},
      h('thead', {}, h('tr', {}, columns.map((c) => h('th', { scope: 'col', class: c.class }, c.title)))),
      h('tbody', {}, rows.map((row) =>
        h('tr', rowAttrs ? rowAttrs(row) : {},
          columns.map((c) => h('td', { class: c.class, 'data-label': typeof c.title === 'string' ? c.title : null }, c.cell(row))))))));
}

export function emptyState(text) {
  return h('p', { class: 'empty', role: 'status' }, text);
}

/** An error as the API gave it: code and message verbatim. */
export function errorBox(error) {
  if (error instanceof ApiError) {
    return h('div', { class: 'error', role: 'alert' },
      h('span', { class: 'error-code' }, `code ${error.code}`), ' ',
      h('span', { class: 'error-message' }, error.message));
  }
  return h('div', { class: 'error', role: 'alert' }, h('span', { class: 'error-message' }, String(error.message || error)));
}

/** A task state (QUEUED, RUNNING, SUCCESS, FAILED, CANCELED) or a resource state. */
export function badge(text, legacy) {
  const kind = String(text).toLowerCase().replace(/[^a-z]+/g, '-');
  return h('span', { class: `badge badge-${kind}` }, text, legacy !== undefined ? h('span', { class: 'legacy' }, ` ${legacy}`) : null);
}

export function link(href, text) {
  return h('a', { href }, text);
}

/** Asks before a change; resolves to the form's values, or null when declined. */
export function confirmDialog(title, body, fields = []) {
  return new Promise((resolve) => {
    const inputs = fields.map((f) => h('input', { name: f.name, type: f.type || 'text', required: f.required, autocomplete: 'off', id: `dlg-${f.name}` }));
    const form = h('form', { method: 'dialog' },
      h('h2', {}, title),
      h('p', {}, body),
      fields.map((f, i) => h('label', { for: `dlg-${f.name}` }, f.label, inputs[i])),
      h('div', { class: 'buttons' },
        h('button', { value: 'cancel', type: 'button', class: 'secondary', onclick: () => dialog.close('cancel') }, 'Cancel'),
        h('button', { value: 'ok', type: 'submit', class: 'primary' }, 'Confirm')));
    const dialog = h('dialog', { 'aria-label': title }, form);
    dialog.addEventListener('close', () => {
      dialog.remove();
      if (dialog.returnValue !== 'ok') return resolve(null);
      resolve(Object.fromEntries(inputs.map((i) => [i.name, i.value])));
    });
    document.body.append(dialog);
    dialog.showModal();
    (inputs[0] || form.querySelector('button.primary')).focus();
  });
}

/** A view's heading line: title and optional controls. */
export function header(title, ...controls) {
  return h('div', { class: 'view-header' }, h('h1', { tabindex: '-1' }, title), h('div', { class: 'controls' }, controls));
}

/** A labelled select of `options` ([value, text]). */
export function select(label, name, options, value, onchange) {
  const id = `f-${name}`;
  return h('label', { for: id }, label,
    h('select', { id, name, onchange },
      options.map(([v, t]) => h('option', { value: v, selected: v === value }, t))));
}

export function input(label, name, value, attrs = {}) {
  const id = `f-${name}`;
  return h('label', { for: id }, label, h('input', { id, name, value: value || '', ...attrs }));
}
