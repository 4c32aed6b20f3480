// Load balancers and, on a load balancer's page, its backends with each instance's
// legacy status (runFlag).

import { call } from './api.js';
import { h, fill, table, badge, link, errorBox, header, input } from './dom.js';

export async function render(main, route) {
  const id = route.path[1];
  return id ? renderBackends(main, id) : renderList(main, route.query);
}

async function renderList(main, q) {
  const search = q.get('q') || '';
  const results = h('div', { id: 'load-balancers' });
  const box = input('Search', 'q', search, { type: 'search', placeholder: 'ID, name or VIP' });
  const form = h('form', { class: 'filters', role: 'search', onsubmit: (e) => {
    e.preventDefault();
    const value = box.querySelector('input').value.trim();
    location.hash = value ? `#/lb?q=${encodeURIComponent(value)}` : '#/lb';
  } }, box, h('button', { type: 'submit', class: 'secondary' }, 'Search'));
  fill(main, header('Load balancers'), form, results);
  try {
    const answer = await call('DescribeLoadBalancers', { searchKey: search, limit: 100 });
    fill(results, table([
      { title: 'Load balancer', cell: (b) => link(`#/lb/${b.loadBalancerId}`, b.loadBalancerId), class: 'id' },
      { title: 'Name', cell: (b) => b.loadBalancerName || '' },
      { title: 'Type', cell: (b) => (b.loadBalancerType === 2 ? 'public' : b.loadBalancerType === 3 ? 'private' : b.loadBalancerType) },
      { title: 'VIPs', cell: (b) => (b.loadBalancerVips || []).join(', ') },
      { title: 'State', cell: (b) => badge(b.statusName, b.status) },
      { title: 'Latest operation', cell: (b) => (b.latestOperation ? [link(`#/tasks/${b.latestOperation.requestId}`, b.latestOperation.action), ' ', badge(b.latestOperation.state)] : '') },
      { title: 'History', cell: (b) => link(`#/history/${b.loadBalancerId}`, 'history') },
    ], answer.loadBalancerSet, { empty: search ? 'No load balancer matches.' : 'No load balancers yet. Create one with CreateLoadBalancer.' }),
    h('p', { class: 'muted' }, `${answer.totalCount} load balancer${answer.totalCount === 1 ? '' : 's'}`));
  } catch (e) {
    fill(results, errorBox(e));
  }
}

async function renderBackends(main, id) {
  const results = h('div', { id: 'backends' });
  fill(main, header(`Load balancer ${id}`, link(`#/history/${id}`, 'History'), ' ', link('#/lb', 'All load balancers')),
    h('h2', {}, 'Backends'), results);
  try {
    const answer = await call('DescribeLoadBalancerBackends', { loadBalancerId: id, limit: 100 });
    fill(results, table([
      { title: 'Instance', cell: (b) => link(`#/history/${b.instanceId}`, b.instanceId), class: 'id' },
      { title: 'Name', cell: (b) => b.instanceName || '' },
      { title: 'LAN IP', cell: (b) => b.lanIp || '' },
      { title: 'Weight', cell: (b) => b.weight, class: 'num' },
      { title: 'Instance state', cell: (b) => (b.instanceStatusName ? badge(b.instanceStatusName, b.runFlag) : '') },
    ], answer.backendSet || [], { empty: 'No backends: register instances with RegisterInstancesWithLoadBalancer.' }));
  } catch (e) {
    fill(results, errorBox(e));
  }
}
