//! Write operations. Each runs inside the writer's transaction, in its own savepoint.

use crate::reads::{task_from_row, TASK_COLUMNS};
use crate::writer::{backend, WriterState};
use qtask_core::{AccountId, Effect, Rejection, RequestId, ResourceState, SecretId, UnixMillis};
use qtask_store::*;
use r2d2_sqlite::rusqlite::{params, Connection, OptionalExtension};
use serde_json::{json, Map, Value};

pub fn record_nonce(conn: &Connection, claim: &NonceClaim) -> StoreResult<NonceOutcome> {
    match insert_nonce(conn, claim)? {
        None => Ok(NonceOutcome::Fresh),
        Some(answer) => Ok(NonceOutcome::Resent { answer }),
    }
}

/// Inserts the nonce. `None` when it is new; `Some(answer)` when the very same request
/// (same signature) was seen before; an error when another request used it.
fn insert_nonce(conn: &Connection, claim: &NonceClaim) -> StoreResult<Option<Option<String>>> {
    let inserted = conn
        .prepare_cached(
            "INSERT INTO nonces (secret_id, nonce, expires_at, signature) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT DO NOTHING",
        )
        .and_then(|mut s| {
            s.execute(params![
                claim.secret_id.as_str(),
                claim.nonce.get() as i64,
                claim.expires_at,
                claim.signature
            ])
        })
        .map_err(backend)?;
    if inserted == 1 {
        return Ok(None);
    }
    let (signature, answer): (String, Option<String>) = conn
        .prepare_cached("SELECT signature, answer FROM nonces WHERE secret_id = ?1 AND nonce = ?2")
        .and_then(|mut s| {
            s.query_row(
                params![claim.secret_id.as_str(), claim.nonce.get() as i64],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
        })
        .map_err(backend)?;
    if signature == claim.signature {
        Ok(Some(answer))
    } else {
        Err(StoreError::NonceReused {
            secret_id: claim.secret_id.clone(),
            nonce: claim.nonce.get(),
        })
    }
}

pub fn submit(
    conn: &Connection,
    ids: &mut WriterState,
    submission: Submission,
) -> StoreResult<Submitted> {
    let Submission {
        account,
        region,
        action,
        nonce,
        idempotency,
        grouped,
        tasks,
        now,
        answer,
    } = submission;

    if let Some(resent) = insert_nonce(conn, &nonce)? {
        return match resent {
            Some(answer) => Ok(Submitted::Repeated { answer }),
            // The same signature on a request that stored no answer cannot be this
            // mutating request: treat it as a reuse.
            None => Err(StoreError::NonceReused {
                secret_id: nonce.secret_id.clone(),
                nonce: nonce.nonce.get(),
            }),
        };
    }
    if let Some(key) = &idempotency {
        if let Some(first_answer) = earlier_answer(conn, account, key)? {
            store_answer(conn, &nonce, &first_answer)?;
            return Ok(Submitted::Repeated {
                answer: first_answer,
            });
        }
    }

    let group = grouped.then(|| RequestId::new(ids.allocate_id()).expect("IDs start at 1"));
    let mut outcomes = Vec::with_capacity(tasks.len());
    for planned in &tasks {
        let resource = planned.target.resource_id().clone();
        let outcome = plan_one(
            conn,
            ids,
            account,
            region.as_str(),
            &action,
            group,
            planned,
            now,
        )?;
        outcomes.push((resource, outcome));
    }
    let report = SubmitReport {
        group: group.filter(|_| outcomes.iter().any(|(_, o)| o.is_ok())),
        outcomes,
    };
    if let Some(group) = report.group {
        conn.prepare_cached(
            "INSERT INTO task_groups (id, account_id, action, created_at) VALUES (?1, ?2, ?3, ?4)",
        )
        .and_then(|mut s| s.execute(params![group.get() as i64, account.0, action, now]))
        .map_err(backend)?;
    }
    let answer = answer(&report);
    store_answer(conn, &nonce, &answer)?;
    if let Some(key) = &idempotency {
        conn.prepare_cached(
            "INSERT INTO client_tokens (account_id, token, fingerprint, answer, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )
        .and_then(|mut s| s.execute(params![account.0, key.token, key.fingerprint, answer, now]))
        .map_err(backend)?;
    }
    Ok(Submitted::New { report, answer })
}

fn earlier_answer(
    conn: &Connection,
    account: AccountId,
    key: &IdempotencyKey,
) -> StoreResult<Option<String>> {
    let found: Option<(String, String)> = conn
        .prepare_cached(
            "SELECT fingerprint, answer FROM client_tokens WHERE account_id = ?1 AND token = ?2",
        )
        .and_then(|mut s| {
            s.query_row(params![account.0, key.token], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()
        })
        .map_err(backend)?;
    match found {
        None => Ok(None),
        Some((fingerprint, answer)) if fingerprint == key.fingerprint => Ok(Some(answer)),
        Some(_) => Err(StoreError::TokenReused {
            token: key.token.clone(),
        }),
    }
}

fn store_answer(conn: &Connection, nonce: &NonceClaim, answer: &str) -> StoreResult<()> {
    conn.prepare_cached("UPDATE nonces SET answer = ?3 WHERE secret_id = ?1 AND nonce = ?2")
        .and_then(|mut s| {
            s.execute(params![
                nonce.secret_id.as_str(),
                nonce.nonce.get() as i64,
                answer
            ])
        })
        .map_err(backend)?;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn plan_one(
    conn: &Connection,
    ids: &mut WriterState,
    account: AccountId,
    region: &str,
    action: &str,
    group: Option<RequestId>,
    planned: &PlannedTask,
    now: UnixMillis,
) -> StoreResult<Result<RequestId, Rejection>> {
    let prior_state = match &planned.target {
        Target::Existing { id, allowed } => {
            let found: Option<(i64, String, String, Option<i64>)> = conn
                .prepare_cached(
                    "SELECT account_id, region, state, active_task FROM resources WHERE id = ?1",
                )
                .and_then(|mut s| {
                    s.query_row([id.as_str()], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                    })
                    .optional()
                })
                .map_err(backend)?;
            let Some((owner, resource_region, state, active)) = found else {
                return Ok(Err(Rejection::NotFound));
            };
            if owner != account.0 || resource_region != region {
                return Ok(Err(Rejection::NotFound));
            }
            if let Some(active) = active {
                let active_action: String = conn
                    .prepare_cached("SELECT action FROM tasks WHERE id = ?1")
                    .and_then(|mut s| s.query_row([active], |r| r.get(0)))
                    .map_err(backend)?;
                return Ok(Err(Rejection::Busy {
                    task: RequestId::new(active as u64)
                        .map_err(|e| StoreError::Backend(e.to_string()))?,
                    action: active_action,
                }));
            }
            let state = ResourceState(state);
            if !allowed.is_empty() && !allowed.contains(&state) {
                return Ok(Err(Rejection::WrongState {
                    state,
                    allowed: allowed.clone(),
                }));
            }
            state
        }
        Target::Create(new) => new.state.clone(),
    };

    let task = RequestId::new(ids.allocate_id()).expect("IDs start at 1");
    let task_id = task.get() as i64;
    match &planned.target {
        Target::Existing { id, .. } => {
            let shown = planned.effect.transitional.as_ref().unwrap_or(&prior_state);
            conn.prepare_cached(
                "UPDATE resources SET state = ?2, active_task = ?3, last_task = ?3 WHERE id = ?1",
            )
            .and_then(|mut s| s.execute(params![id.as_str(), shown.as_str(), task_id]))
            .map_err(backend)?;
        }
        Target::Create(new) => {
            let inserted = conn
                .prepare_cached(
                    "INSERT INTO resources (id, account_id, kind, region, state, attrs, created_at, active_task, last_task)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8) ON CONFLICT DO NOTHING",
                )
                .and_then(|mut s| {
                    s.execute(params![
                        new.id.as_str(),
                        account.0,
                        new.kind,
                        region,
                        new.state.as_str(),
                        Value::Object(new.attrs.clone()).to_string(),
                        now,
                        task_id
                    ])
                })
                .map_err(backend)?;
            if inserted == 0 {
                return Err(StoreError::DuplicateResource(new.id.clone()));
            }
        }
    }
    conn.prepare_cached(
        "INSERT INTO tasks (id, account_id, group_id, action, resource_id, region, params, effect, prior_state, state, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, 'QUEUED', ?10)",
    )
    .and_then(|mut s| {
        s.execute(params![
            task_id,
            account.0,
            group.map(|g| g.get() as i64),
            action,
            planned.target.resource_id().as_str(),
            region,
            planned.params.to_string(),
            effect_to_json(&planned.effect).to_string(),
            prior_state.as_str(),
            now
        ])
    })
    .map_err(backend)?;
    Ok(Ok(task))
}

pub fn claim(
    conn: &Connection,
    task: RequestId,
    now: UnixMillis,
) -> StoreResult<Option<ClaimedTask>> {
    let sql = format!(
        "UPDATE tasks SET state = 'RUNNING', attempts = attempts + 1, started_at = ?2
         WHERE id = ?1 AND state = 'QUEUED' RETURNING {TASK_COLUMNS}"
    );
    let claimed = conn
        .prepare_cached(&sql)
        .and_then(|mut s| {
            s.query_row(params![task.get() as i64, now], task_from_row)
                .optional()
        })
        .map_err(backend)?;
    let Some(task) = claimed else {
        return Ok(None);
    };
    let attrs: String = conn
        .prepare_cached("SELECT attrs FROM resources WHERE id = ?1")
        .and_then(|mut s| s.query_row([task.resource.as_str()], |r| r.get(0)))
        .map_err(backend)?;
    Ok(Some(ClaimedTask {
        task,
        resource_attrs: parse_object(&attrs)?,
    }))
}

pub fn complete(
    conn: &Connection,
    task: RequestId,
    outcome: &TaskOutcome,
    now: UnixMillis,
) -> StoreResult<()> {
    let id = task.get() as i64;
    let found: Option<(String, String, String, String)> = conn
        .prepare_cached("SELECT resource_id, effect, prior_state, state FROM tasks WHERE id = ?1")
        .and_then(|mut s| {
            s.query_row([id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
                .optional()
        })
        .map_err(backend)?;
    let Some((resource, effect, prior, state)) = found else {
        return Err(StoreError::NotFound(format!("task {task}")));
    };
    if state != "RUNNING" {
        // Only a running task has an outcome to record; anything else is a stale call.
        tracing::warn!(%task, state, "ignored the outcome of a task that is not running");
        return Ok(());
    }
    let effect = effect_from_json(&effect)?;
    let succeeded = matches!(outcome, TaskOutcome::Succeeded { .. });
    let (error_code, error_message, result) = match outcome {
        TaskOutcome::Succeeded { result } => (None, None, result.as_ref().map(Value::to_string)),
        TaskOutcome::Failed(error) => (Some(error.code), Some(error.message.as_str()), None),
    };
    conn.prepare_cached(
        "UPDATE tasks SET state = ?2, finished_at = ?3, error_code = ?4, error_message = ?5, result = ?6 WHERE id = ?1",
    )
    .and_then(|mut s| {
        s.execute(params![id, outcome.state().as_str(), now, error_code, error_message, result])
    })
    .map_err(backend)?;
    let final_state = effect.final_state(&ResourceState(prior), succeeded);
    let patch = if succeeded && !effect.patch.is_empty() {
        Some(Value::Object(effect.patch).to_string())
    } else {
        None
    };
    conn.prepare_cached(
        "UPDATE resources SET state = ?2, active_task = NULL,
             attrs = CASE WHEN ?3 IS NULL THEN attrs ELSE json_patch(attrs, ?3) END
         WHERE id = ?1 AND active_task = ?4",
    )
    .and_then(|mut s| s.execute(params![resource, final_state.as_str(), patch, id]))
    .map_err(backend)?;
    Ok(())
}

pub fn recover(conn: &Connection) -> StoreResult<Vec<RequestId>> {
    let requeued = conn
        .execute(
            "UPDATE tasks SET state = 'QUEUED' WHERE state = 'RUNNING'",
            [],
        )
        .map_err(backend)?;
    if requeued > 0 {
        tracing::warn!(
            requeued,
            "tasks that were running when the last process stopped will run again"
        );
    }
    let mut stmt = conn
        .prepare("SELECT id FROM tasks WHERE state IN ('QUEUED', 'RUNNING') ORDER BY id")
        .map_err(backend)?;
    let ids = stmt
        .query_map([], |r| r.get::<_, i64>(0))
        .map_err(backend)?
        .map(|id| {
            id.map_err(backend).and_then(|id| {
                RequestId::new(id as u64).map_err(|e| StoreError::Backend(e.to_string()))
            })
        })
        .collect();
    ids
}

pub fn create_account(conn: &Connection, name: &str, now: UnixMillis) -> StoreResult<AccountId> {
    conn.execute(
        "INSERT INTO accounts (name, created_at) VALUES (?1, ?2)",
        params![name, now],
    )
    .map_err(backend)?;
    Ok(AccountId(conn.last_insert_rowid()))
}

pub fn create_key(conn: &Connection, key: &NewApiKey, now: UnixMillis) -> StoreResult<()> {
    conn.execute(
        "INSERT INTO api_keys (secret_id, account_id, secret_key, enabled, created_at) VALUES (?1, ?2, ?3, 1, ?4)",
        params![key.secret_id.as_str(), key.account.0, key.secret_key, now],
    )
    .map_err(backend)?;
    Ok(())
}

pub fn set_key_enabled(
    conn: &Connection,
    secret_id: &SecretId,
    enabled: bool,
) -> StoreResult<bool> {
    let changed = conn
        .execute(
            "UPDATE api_keys SET enabled = ?2 WHERE secret_id = ?1",
            params![secret_id.as_str(), enabled],
        )
        .map_err(backend)?;
    Ok(changed == 1)
}

fn effect_to_json(effect: &Effect) -> Value {
    let state = |s: &Option<ResourceState>| s.as_ref().map(|s| s.as_str().to_owned());
    json!({
        "transitional": state(&effect.transitional),
        "onSuccess": state(&effect.on_success),
        "onFailure": state(&effect.on_failure),
        "patch": effect.patch,
    })
}

fn effect_from_json(text: &str) -> StoreResult<Effect> {
    let value = parse_object(text)?;
    let state = |key: &str| {
        value
            .get(key)
            .and_then(Value::as_str)
            .map(ResourceState::new)
    };
    Ok(Effect {
        transitional: state("transitional"),
        on_success: state("onSuccess"),
        on_failure: state("onFailure"),
        patch: value
            .get("patch")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default(),
    })
}

pub fn parse_object(text: &str) -> StoreResult<Map<String, Value>> {
    match serde_json::from_str(text) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(StoreError::Backend(format!(
            "corrupt JSON object in the store: {text:.80}"
        ))),
    }
}
