//! A service's governance as the kernel enforces it (`WEFT_POLICY_V1`): limits, fault
//! injection and `allow` rules. Slow start is not here: it shapes the weights the table is
//! built from.

use weft_common::{AllowRule as KernelRule, CgroupMatch, Policy, allow_kind};

use crate::{
    config::governance::{AllowRule, CgroupPath, Governance},
    layout,
};

/// The policy the kernel needs for `governance`; none when there is nothing to enforce at
/// connect (a service with slow start only, or nothing).
pub fn of(governance: &Governance) -> Option<Policy> {
    let limits = governance.limits;
    let mut policy = Policy {
        max_per_endpoint: limits.max_connections_per_endpoint.unwrap_or(0),
        max_connections: limits.max_connections.unwrap_or(0),
        ..Policy::default()
    };
    if let Some(fault) = &governance.fault {
        policy.abort_percent = u32::from(fault.abort_percent);
        policy.abort_errno = fault.errno.errno() as u32;
        if let Some(cgroup) = &fault.cgroup {
            policy.fault_cgroup = cgroup_match(cgroup);
        }
    }
    for (slot, rule) in policy.rules.iter_mut().zip(&governance.allow) {
        *slot = kernel_rule(rule);
    }
    policy.rule_count = governance.allow.len().min(policy.rules.len()) as u32;
    (policy != Policy::default()).then_some(policy)
}

fn kernel_rule(rule: &AllowRule) -> KernelRule {
    match rule {
        AllowRule::Cgroup(cgroup) => KernelRule {
            kind: allow_kind::CGROUP,
            cgroup: cgroup_match(cgroup),
            ..KernelRule::default()
        },
        AllowRule::Uid(uid) => KernelRule {
            kind: allow_kind::UID,
            id: *uid,
            ..KernelRule::default()
        },
        AllowRule::Gid(gid) => KernelRule {
            kind: allow_kind::GID,
            id: *gid,
            ..KernelRule::default()
        },
        AllowRule::Cidr { network, prefix } => {
            let (network, family) = layout::kernel_addr(*network);
            KernelRule {
                kind: allow_kind::CIDR,
                prefix: *prefix,
                family,
                network,
                ..KernelRule::default()
            }
        }
    }
}

/// A cgroup the source resolved; an unresolved one (which the file source never hands on)
/// matches no task: id 0 is no cgroup's.
fn cgroup_match(cgroup: &CgroupPath) -> CgroupMatch {
    let id = cgroup
        .id
        .unwrap_or(crate::config::governance::CgroupId { id: 0, level: 0 });
    CgroupMatch {
        id: id.id,
        level: id.level,
        _pad: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::governance::{CgroupId, Fault, FaultErrno, Limits};

    #[test]
    fn nothing_to_enforce_writes_no_policy() {
        assert_eq!(of(&Governance::default()), None);
    }

    #[test]
    fn every_setting_reaches_the_kernel_form() {
        let mut cgroup = CgroupPath::new("/apps/a");
        cgroup.id = Some(CgroupId { id: 77, level: 2 });
        let governance = Governance {
            limits: Limits {
                max_connections_per_endpoint: Some(5),
                max_connections: None,
            },
            slow_start: None,
            fault: Some(Fault {
                abort_percent: 20,
                errno: FaultErrno::TimedOut,
                cgroup: Some(cgroup.clone()),
            }),
            allow: vec![
                AllowRule::Uid(1000),
                AllowRule::Cgroup(cgroup),
                AllowRule::Cidr {
                    network: "10.0.0.0".parse().unwrap(),
                    prefix: 8,
                },
            ],
        };
        let policy = of(&governance).expect("a policy");
        assert_eq!(policy.max_per_endpoint, 5);
        assert_eq!(policy.max_connections, 0);
        assert!(policy.limited());
        assert_eq!(policy.abort_percent, 20);
        assert_eq!(policy.abort_errno, libc::ETIMEDOUT as u32);
        assert_eq!((policy.fault_cgroup.id, policy.fault_cgroup.level), (77, 2));
        assert_eq!(policy.rule_count, 3);
        assert_eq!(
            (policy.rules[0].kind, policy.rules[0].id),
            (allow_kind::UID, 1000)
        );
        assert_eq!(policy.rules[1].cgroup.id, 77);
        let cidr = policy.rules[2];
        assert_eq!((cidr.kind, cidr.prefix), (allow_kind::CIDR, 8));
        assert_eq!(cidr.network[0], u32::from_ne_bytes([10, 0, 0, 0]));
    }
}
