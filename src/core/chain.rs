//! Runs a chain of policies through one phase: in order on the request, in reverse on the
//! response, stopping at the first policy that does not continue. A policy waiting on a call-out
//! leaves a cursor behind so the chain resumes exactly there.

use std::rc::Rc;

use crate::http::{Request, Response};
use crate::policy::{Body, CallResponse, Context, Phases, Policy, Verdict};

/// An ordered, immutable list of compiled policies (client → plan → API).
#[derive(Clone, Default)]
pub struct Chain {
    policies: Rc<[Rc<dyn Policy>]>,
    phases: Phases,
}

impl Chain {
    pub fn new(policies: Vec<Rc<dyn Policy>>) -> Chain {
        let phases = policies
            .iter()
            .fold(Phases::NONE, |acc, p| acc.union(p.phases()));
        Chain {
            policies: policies.into(),
            phases,
        }
    }

    pub fn len(&self) -> usize {
        self.policies.len()
    }

    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }

    /// Whether any policy takes part in `phase`.
    pub fn needs(&self, phase: Phases) -> bool {
        self.phases.contains(phase)
    }

    pub fn policies(&self) -> &[Rc<dyn Policy>] {
        &self.policies
    }

    /// A chain made of `first` followed by `then` (used to compose client → plan → API).
    pub fn concat(parts: &[&[Rc<dyn Policy>]]) -> Chain {
        Chain::new(parts.iter().flat_map(|p| p.iter().cloned()).collect())
    }
}

/// Which callback a policy is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Request,
    RequestBody,
    Response,
    ResponseBody,
}

impl Phase {
    fn flag(self) -> Phases {
        match self {
            Phase::Request => Phases::REQUEST,
            Phase::RequestBody => Phases::REQUEST_BODY,
            Phase::Response => Phases::RESPONSE,
            Phase::ResponseBody => Phases::RESPONSE_BODY,
        }
    }

    fn reversed(self) -> bool {
        matches!(self, Phase::Response | Phase::ResponseBody)
    }
}

/// The view a phase works on.
pub enum Subject<'a> {
    Request(&'a mut Request),
    Response(&'a mut Response),
    Body(&'a mut Body),
}

/// Progress through one chain for one request: where a paused phase resumes.
#[derive(Debug, Default)]
pub struct Cursor {
    /// The phase and the chain position of a policy waiting for its call-out.
    waiting: Option<(Phase, usize)>,
}

impl Cursor {
    pub fn is_waiting(&self) -> bool {
        self.waiting.is_some()
    }

    /// Runs `phase` over the chain from its start. The context's `position` is set per policy.
    pub fn run(
        &mut self,
        chain: &Chain,
        phase: Phase,
        cx: &mut Context,
        subject: Subject,
    ) -> Verdict {
        if !chain.needs(phase.flag()) {
            return Verdict::Continue;
        }
        self.run_from(chain, phase, 0, cx, subject)
    }

    /// Hands a call-out's response to the policy that asked for it, then finishes its phase.
    pub fn resume(
        &mut self,
        chain: &Chain,
        response: &CallResponse,
        cx: &mut Context,
        subject: Subject,
    ) -> Verdict {
        let Some((phase, position)) = self.waiting.take() else {
            return Verdict::Continue;
        };
        let Some(policy) = chain.policies.get(position) else {
            return Verdict::Continue;
        };
        cx.position = position;
        match policy.on_call_response(cx, response) {
            Verdict::Continue => {}
            Verdict::CallOut(call) => {
                self.waiting = Some((phase, position));
                return Verdict::CallOut(call);
            }
            other => return other,
        }
        // Step `position` back into iteration order and continue after it.
        let n = chain.policies.len();
        let step = if phase.reversed() {
            n - 1 - position
        } else {
            position
        };
        self.run_from(chain, phase, step + 1, cx, subject)
    }

    fn run_from(
        &mut self,
        chain: &Chain,
        phase: Phase,
        start: usize,
        cx: &mut Context,
        mut subject: Subject,
    ) -> Verdict {
        let n = chain.policies.len();
        for step in start..n {
            let position = if phase.reversed() { n - 1 - step } else { step };
            let Some(policy) = chain.policies.get(position) else {
                break;
            };
            if !policy.phases().contains(phase.flag()) {
                continue;
            }
            cx.position = position;
            let verdict = match (&mut subject, phase) {
                (Subject::Request(r), Phase::Request) => policy.on_request(cx, r),
                (Subject::Response(r), Phase::Response) => policy.on_response(cx, r),
                (Subject::Body(b), Phase::RequestBody) => policy.on_request_body(cx, b),
                (Subject::Body(b), Phase::ResponseBody) => policy.on_response_body(cx, b),
                // A phase paired with the wrong view is a programming error; do nothing rather
                // than panic on the request path.
                _ => Verdict::Continue,
            };
            match verdict {
                Verdict::Continue => {}
                Verdict::CallOut(call) => {
                    self.waiting = Some((phase, position));
                    return Verdict::CallOut(call);
                }
                stop => return stop,
            }
        }
        Verdict::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::testing::{request, response, Fixture};
    use crate::policy::{CallOut, FailureType, PolicyFailure};
    use std::cell::RefCell;
    use std::time::Duration;

    /// Records its name into a shared log in every phase; optionally fails or waits.
    struct Probe {
        name: &'static str,
        log: Rc<RefCell<Vec<String>>>,
        fail: bool,
        call_out: bool,
    }

    impl Policy for Probe {
        fn id(&self) -> &'static str {
            "probe"
        }
        fn phases(&self) -> Phases {
            Phases::REQUEST.union(Phases::RESPONSE)
        }
        fn on_request(&self, _cx: &mut Context, _r: &mut Request) -> Verdict {
            self.log.borrow_mut().push(format!("req:{}", self.name));
            if self.call_out {
                return Verdict::CallOut(CallOut {
                    cluster: "jwks".into(),
                    headers: vec![],
                    body: None,
                    timeout: Duration::from_secs(1),
                });
            }
            if self.fail {
                return Verdict::Fail(PolicyFailure::new(FailureType::Other, 1, "no"));
            }
            Verdict::Continue
        }
        fn on_response(&self, _cx: &mut Context, _r: &mut Response) -> Verdict {
            self.log.borrow_mut().push(format!("resp:{}", self.name));
            Verdict::Continue
        }
        fn on_call_response(&self, _cx: &mut Context, r: &CallResponse) -> Verdict {
            self.log
                .borrow_mut()
                .push(format!("answer:{}:{}", self.name, r.status));
            Verdict::Continue
        }
    }

    fn chain(specs: &[(&'static str, bool, bool)], log: &Rc<RefCell<Vec<String>>>) -> Chain {
        Chain::new(
            specs
                .iter()
                .map(|&(name, fail, call_out)| {
                    Rc::new(Probe {
                        name,
                        log: log.clone(),
                        fail,
                        call_out,
                    }) as Rc<dyn Policy>
                })
                .collect(),
        )
    }

    #[test]
    fn request_runs_in_order_and_response_in_reverse() {
        let log = Rc::default();
        let c = chain(
            &[
                ("client", false, false),
                ("plan", false, false),
                ("api", false, false),
            ],
            &log,
        );
        let mut f = Fixture::new();
        let mut cursor = Cursor::default();
        let mut req = request("GET", &[]);
        let mut resp = response(200, &[]);
        assert!(matches!(
            cursor.run(&c, Phase::Request, &mut f.cx(), Subject::Request(&mut req)),
            Verdict::Continue
        ));
        cursor.run(
            &c,
            Phase::Response,
            &mut f.cx(),
            Subject::Response(&mut resp),
        );
        assert_eq!(
            *log.borrow(),
            vec![
                "req:client",
                "req:plan",
                "req:api",
                "resp:api",
                "resp:plan",
                "resp:client"
            ]
        );
    }

    #[test]
    fn the_first_failure_stops_the_chain() {
        let log = Rc::default();
        let c = chain(
            &[("a", false, false), ("b", true, false), ("c", false, false)],
            &log,
        );
        let mut f = Fixture::new();
        let verdict = Cursor::default().run(
            &c,
            Phase::Request,
            &mut f.cx(),
            Subject::Request(&mut request("GET", &[])),
        );
        assert!(matches!(verdict, Verdict::Fail(_)));
        assert_eq!(*log.borrow(), vec!["req:a", "req:b"]);
    }

    #[test]
    fn a_call_out_pauses_and_resumes_at_the_same_policy() {
        let log = Rc::default();
        let c = chain(
            &[("a", false, false), ("b", false, true), ("c", false, false)],
            &log,
        );
        let mut f = Fixture::new();
        let mut cursor = Cursor::default();
        let mut req = request("GET", &[]);
        let verdict = cursor.run(&c, Phase::Request, &mut f.cx(), Subject::Request(&mut req));
        assert!(matches!(verdict, Verdict::CallOut(ref call) if call.cluster == "jwks"));
        assert!(cursor.is_waiting());
        let answer = CallResponse {
            status: 200,
            ..CallResponse::default()
        };
        let verdict = cursor.resume(&c, &answer, &mut f.cx(), Subject::Request(&mut req));
        assert!(matches!(verdict, Verdict::Continue));
        assert_eq!(
            *log.borrow(),
            vec!["req:a", "req:b", "answer:b:200", "req:c"]
        );
    }

    #[test]
    fn a_chain_without_response_policies_skips_the_response_phase() {
        struct RequestOnly;
        impl Policy for RequestOnly {
            fn id(&self) -> &'static str {
                "request-only"
            }
            fn phases(&self) -> Phases {
                Phases::REQUEST
            }
        }
        let c = Chain::new(vec![Rc::new(RequestOnly)]);
        assert!(c.needs(Phases::REQUEST));
        assert!(!c.needs(Phases::RESPONSE));
    }
}
