//! The oracle of the state check: what an instance's state must be after its history
//! (DescribeResourceHistory), replayed oldest first. It is written from the actions'
//! documented effects, not taken from the engine's catalog, so a wrong catalog or store
//! shows up as a disagreement.

use serde::Deserialize;

// Instance state names, as DescribeInstances shows them (`statusName`).
const PENDING: &str = "PENDING";
const RUNNING: &str = "RUNNING";
const STOPPED: &str = "STOPPED";
const LAUNCH_FAILED: &str = "LAUNCH_FAILED";

/// One operation of a resource's history, as DescribeResourceHistory shows it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Operation {
    pub request_id: String,
    pub action: String,
    pub state: String,
}

/// An instance whose state is not what its history says.
#[derive(Debug, Clone, PartialEq)]
pub struct Disagreement {
    pub instance: String,
    pub state: String,
    /// The state the history leads to, or why it leads to none.
    pub expected: Result<&'static str, String>,
    pub history: Vec<Operation>,
}

/// The state `oldest_first` leads to from creation: a success of Run, Start or Restart
/// leaves the instance RUNNING, of Stop STOPPED, of Modify as it was; a failed or
/// canceled RunInstances leaves it LAUNCH_FAILED, any other failure or cancel as it was.
/// An unfinished task or an action the test does not send is an error.
pub fn expected_state(oldest_first: &[Operation]) -> Result<&'static str, String> {
    let mut state = PENDING;
    for op in oldest_first {
        let action = op.action.as_str();
        if !matches!(
            action,
            "RunInstances"
                | "StartInstances"
                | "StopInstances"
                | "RestartInstances"
                | "ModifyInstanceAttributes"
        ) {
            return Err(format!(
                "task {} is a {action}, which the test does not send",
                op.request_id
            ));
        }
        state = match (op.state.as_str(), action) {
            ("SUCCESS", "StopInstances") => STOPPED,
            ("SUCCESS", "ModifyInstanceAttributes") => state,
            ("SUCCESS", _) => RUNNING,
            ("FAILED" | "CANCELED", "RunInstances") => LAUNCH_FAILED,
            ("FAILED" | "CANCELED", _) => state,
            (other, _) => {
                return Err(format!(
                    "task {} ({action}) is {other}, not final",
                    op.request_id
                ))
            }
        };
    }
    Ok(state)
}

/// Compares an instance's state with its history (newest first, as the API lists it).
pub fn check(instance: &str, state: &str, newest_first: Vec<Operation>) -> Option<Disagreement> {
    let mut history = newest_first;
    history.reverse();
    let expected = expected_state(&history);
    (expected.as_deref() != Ok(state)).then(|| Disagreement {
        instance: instance.to_owned(),
        state: state.to_owned(),
        expected,
        history,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(id: u64, action: &str, state: &str) -> Operation {
        Operation {
            request_id: id.to_string(),
            action: action.to_owned(),
            state: state.to_owned(),
        }
    }

    #[test]
    fn successes_set_the_state_and_failures_keep_it() {
        let history = [
            op(1, "RunInstances", "SUCCESS"),
            op(4, "StopInstances", "SUCCESS"),
            op(6, "ModifyInstanceAttributes", "SUCCESS"),
            op(9, "StartInstances", "FAILED"),
            op(11, "RestartInstances", "CANCELED"),
        ];
        assert_eq!(expected_state(&history), Ok(STOPPED));
        assert_eq!(expected_state(&history[..1]), Ok(RUNNING));
        assert_eq!(expected_state(&[]), Ok(PENDING));
    }

    #[test]
    fn a_failed_or_canceled_launch_leaves_launch_failed() {
        assert_eq!(
            expected_state(&[op(1, "RunInstances", "FAILED")]),
            Ok(LAUNCH_FAILED)
        );
        assert_eq!(
            expected_state(&[
                op(1, "RunInstances", "CANCELED"),
                op(2, "ModifyInstanceAttributes", "SUCCESS")
            ]),
            Ok(LAUNCH_FAILED)
        );
    }

    #[test]
    fn a_state_that_contradicts_the_last_success_disagrees() {
        // Newest first, as DescribeResourceHistory answers.
        let history = vec![
            op(5, "StopInstances", "SUCCESS"),
            op(1, "RunInstances", "SUCCESS"),
        ];
        assert_eq!(check("ins-1", STOPPED, history.clone()), None);
        let found = check("ins-1", RUNNING, history).expect("a disagreement");
        assert_eq!(found.expected, Ok(STOPPED));
        assert_eq!(found.history[0].action, "RunInstances");
    }

    #[test]
    fn an_unfinished_or_unknown_task_is_a_disagreement() {
        let unfinished = vec![
            op(2, "StartInstances", "RUNNING"),
            op(1, "RunInstances", "SUCCESS"),
        ];
        assert!(check("ins-1", RUNNING, unfinished).is_some());
        let unknown = vec![
            op(2, "ReturnInstance", "SUCCESS"),
            op(1, "RunInstances", "SUCCESS"),
        ];
        assert!(check("ins-1", RUNNING, unknown).is_some());
    }
}
