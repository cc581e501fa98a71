//! Kafka's ACL model and its decisions, I/O-free: the numeric codes the ACL APIs carry,
//! whether a binding matches a request or a DescribeAcls/DeleteAcls filter, and
//! `authorize`, which decides as Kafka's standard authorizer does:
//! - a super user may do anything;
//! - with no binding on the resource at all, `allow.everyone.if.no.acl.found` decides;
//! - a matching DENY wins over any ALLOW;
//! - an ALLOW matches its own operation, ALL, and the operations it implies (DESCRIBE by
//!   READ, WRITE, DELETE or ALTER; DESCRIBE_CONFIGS by ALTER_CONFIGS);
//! - principals match exactly or through `User:*`, hosts exactly or through `*`; resource
//!   names match LITERAL (exactly, or the `*` wildcard) or PREFIXED bindings.

use std::collections::BTreeSet;

use tern_replication::metadata::AclBinding;

pub mod resource {
    pub const ANY: i8 = 1;
    pub const TOPIC: i8 = 2;
    pub const GROUP: i8 = 3;
    pub const CLUSTER: i8 = 4;
    pub const TRANSACTIONAL_ID: i8 = 5;
    pub const DELEGATION_TOKEN: i8 = 6;
    pub const USER: i8 = 7;
}

pub mod pattern {
    pub const ANY: i8 = 1;
    pub const MATCH: i8 = 2;
    pub const LITERAL: i8 = 3;
    pub const PREFIXED: i8 = 4;
}

pub mod operation {
    pub const ANY: i8 = 1;
    pub const ALL: i8 = 2;
    pub const READ: i8 = 3;
    pub const WRITE: i8 = 4;
    pub const CREATE: i8 = 5;
    pub const DELETE: i8 = 6;
    pub const ALTER: i8 = 7;
    pub const DESCRIBE: i8 = 8;
    pub const CLUSTER_ACTION: i8 = 9;
    pub const DESCRIBE_CONFIGS: i8 = 10;
    pub const ALTER_CONFIGS: i8 = 11;
    pub const IDEMPOTENT_WRITE: i8 = 12;
    pub const CREATE_TOKENS: i8 = 13;
    pub const DESCRIBE_TOKENS: i8 = 14;
}

pub mod permission {
    pub const ANY: i8 = 1;
    pub const DENY: i8 = 2;
    pub const ALLOW: i8 = 3;
}

/// The cluster resource's one name.
pub const CLUSTER_NAME: &str = "kafka-cluster";
pub const WILDCARD: &str = "*";
pub const WILDCARD_PRINCIPAL: &str = "User:*";

/// Names for the CLI and error messages, by code.
pub fn resource_name(code: i8) -> &'static str {
    match code {
        resource::ANY => "Any",
        resource::TOPIC => "Topic",
        resource::GROUP => "Group",
        resource::CLUSTER => "Cluster",
        resource::TRANSACTIONAL_ID => "TransactionalId",
        resource::DELEGATION_TOKEN => "DelegationToken",
        resource::USER => "User",
        _ => "Unknown",
    }
}

pub fn operation_name(code: i8) -> &'static str {
    use operation::*;
    match code {
        ANY => "Any",
        ALL => "All",
        READ => "Read",
        WRITE => "Write",
        CREATE => "Create",
        DELETE => "Delete",
        ALTER => "Alter",
        DESCRIBE => "Describe",
        CLUSTER_ACTION => "ClusterAction",
        DESCRIBE_CONFIGS => "DescribeConfigs",
        ALTER_CONFIGS => "AlterConfigs",
        IDEMPOTENT_WRITE => "IdempotentWrite",
        CREATE_TOKENS => "CreateTokens",
        DESCRIBE_TOKENS => "DescribeTokens",
        _ => "Unknown",
    }
}

/// The code of an operation by its Kafka name (`read`, `Write`, `describe-configs`, ...).
pub fn parse_operation(text: &str) -> Option<i8> {
    let wanted: String = text
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect::<String>()
        .to_ascii_lowercase();
    (operation::ALL..=operation::DESCRIBE_TOKENS)
        .find(|code| operation_name(*code).to_ascii_lowercase() == wanted)
}

/// Why a binding cannot be created (Kafka answers INVALID_REQUEST with the reason).
pub fn validate(binding: &AclBinding) -> Result<(), String> {
    if !(resource::TOPIC..=resource::USER).contains(&binding.resource_type) {
        return Err(format!(
            "resource type {} cannot carry an ACL",
            binding.resource_type
        ));
    }
    if !matches!(binding.pattern_type, pattern::LITERAL | pattern::PREFIXED) {
        return Err("the pattern type must be LITERAL or PREFIXED".into());
    }
    if !(operation::ALL..=operation::DESCRIBE_TOKENS).contains(&binding.operation) {
        return Err(format!(
            "operation {} is not one an ACL names",
            binding.operation
        ));
    }
    if !matches!(
        binding.permission_type,
        permission::ALLOW | permission::DENY
    ) {
        return Err("the permission type must be ALLOW or DENY".into());
    }
    match binding.principal.split_once(':') {
        Some((kind, name)) if !kind.is_empty() && !name.is_empty() => {}
        _ => {
            return Err(format!(
                "principal '{}' is not Type:name (User:alice)",
                binding.principal
            ))
        }
    }
    if binding.resource_name.is_empty() {
        return Err("the resource name is empty".into());
    }
    if binding.resource_type == resource::CLUSTER && binding.resource_name != CLUSTER_NAME {
        return Err(format!("the cluster resource is named {CLUSTER_NAME}"));
    }
    if binding.host.is_empty() {
        return Err("the host is empty (use * for any host)".into());
    }
    Ok(())
}

fn names_resource(binding: &AclBinding, resource_type: i8, name: &str) -> bool {
    binding.resource_type == resource_type
        && match binding.pattern_type {
            pattern::LITERAL => binding.resource_name == name || binding.resource_name == WILDCARD,
            pattern::PREFIXED => name.starts_with(binding.resource_name.as_str()),
            _ => false,
        }
}

/// Whether an ALLOW for `granted` covers `wanted`.
fn implies(granted: i8, wanted: i8) -> bool {
    use operation::*;
    granted == wanted
        || granted == ALL
        || (wanted == DESCRIBE && matches!(granted, READ | WRITE | DELETE | ALTER))
        || (wanted == DESCRIBE_CONFIGS && granted == ALTER_CONFIGS)
}

/// What the authorizer is told about the cluster's settings.
#[derive(Debug, Clone, Copy)]
pub struct Policy<'a> {
    pub super_users: &'a [String],
    pub allow_if_no_acl: bool,
}

/// Whether `principal` connecting from `host` may do `operation` on the resource.
pub fn authorize(
    acls: &BTreeSet<AclBinding>,
    policy: Policy<'_>,
    principal: &str,
    host: &str,
    operation: i8,
    resource_type: i8,
    name: &str,
) -> bool {
    if policy.super_users.iter().any(|user| user == principal) {
        return true;
    }
    let mut on_resource = acls
        .iter()
        .filter(|binding| names_resource(binding, resource_type, name))
        .peekable();
    if on_resource.peek().is_none() {
        return policy.allow_if_no_acl;
    }
    let mut allowed = false;
    for binding in on_resource {
        let applies = (binding.principal == principal || binding.principal == WILDCARD_PRINCIPAL)
            && (binding.host == host || binding.host == WILDCARD);
        if !applies {
            continue;
        }
        match binding.permission_type {
            permission::DENY
                if binding.operation == operation || binding.operation == operation::ALL =>
            {
                return false;
            }
            permission::ALLOW if implies(binding.operation, operation) => allowed = true,
            _ => {}
        }
    }
    allowed
}

/// Whether `principal` may do `operation` on some resource of the type (Kafka's
/// authorizeByResourceType, which lets a producer with WRITE on a topic be idempotent): an
/// applicable ALLOW of it exists and no DENY of it covers every resource of the type.
pub fn authorize_any(
    acls: &BTreeSet<AclBinding>,
    policy: Policy<'_>,
    principal: &str,
    host: &str,
    operation: i8,
    resource_type: i8,
) -> bool {
    if policy.super_users.iter().any(|user| user == principal) {
        return true;
    }
    let applies = |binding: &&AclBinding| {
        binding.resource_type == resource_type
            && (binding.principal == principal || binding.principal == WILDCARD_PRINCIPAL)
            && (binding.host == host || binding.host == WILDCARD)
            && (binding.operation == operation || binding.operation == operation::ALL)
    };
    let denied_everywhere = acls.iter().filter(applies).any(|binding| {
        binding.permission_type == permission::DENY
            && binding.pattern_type == pattern::LITERAL
            && binding.resource_name == WILDCARD
    });
    if denied_everywhere {
        return false;
    }
    acls.iter()
        .filter(applies)
        .any(|binding| binding.permission_type == permission::ALLOW)
        || (policy.allow_if_no_acl && !acls.iter().any(|b| b.resource_type == resource_type))
}

/// A DescribeAcls or DeleteAcls filter, in Kafka's codes; `None` fields match anything.
#[derive(Debug, Clone)]
pub struct Filter {
    pub resource_type: i8,
    pub resource_name: Option<String>,
    pub pattern_type: i8,
    pub principal: Option<String>,
    pub host: Option<String>,
    pub operation: i8,
    pub permission_type: i8,
}

impl Filter {
    pub fn matches(&self, binding: &AclBinding) -> bool {
        let resource_type =
            self.resource_type == resource::ANY || self.resource_type == binding.resource_type;
        let name = match (&self.resource_name, self.pattern_type) {
            (None, pattern::ANY | pattern::MATCH) => true,
            (None, exact) => exact == binding.pattern_type,
            (Some(name), pattern::ANY) => *name == binding.resource_name,
            // MATCH: the bindings that would apply to a resource of that name.
            (Some(name), pattern::MATCH) => match binding.pattern_type {
                pattern::LITERAL => {
                    binding.resource_name == *name || binding.resource_name == WILDCARD
                }
                pattern::PREFIXED => name.starts_with(binding.resource_name.as_str()),
                _ => false,
            },
            (Some(name), exact) => exact == binding.pattern_type && *name == binding.resource_name,
        };
        let principal = self
            .principal
            .as_ref()
            .is_none_or(|p| *p == binding.principal);
        let host = self.host.as_ref().is_none_or(|h| *h == binding.host);
        let operation = self.operation == operation::ANY || self.operation == binding.operation;
        let permission = self.permission_type == permission::ANY
            || self.permission_type == binding.permission_type;
        resource_type && name && principal && host && operation && permission
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acl(
        resource_type: i8,
        name: &str,
        pattern_type: i8,
        principal: &str,
        op: i8,
        perm: i8,
    ) -> AclBinding {
        AclBinding {
            resource_type,
            resource_name: name.into(),
            pattern_type,
            principal: principal.into(),
            host: "*".into(),
            operation: op,
            permission_type: perm,
        }
    }

    const POLICY: Policy<'static> = Policy {
        super_users: &[],
        allow_if_no_acl: false,
    };

    fn can(acls: &BTreeSet<AclBinding>, principal: &str, op: i8, kind: i8, name: &str) -> bool {
        authorize(acls, POLICY, principal, "127.0.0.1", op, kind, name)
    }

    #[test]
    fn allow_deny_wildcards_prefixes_and_implied_operations_decide_as_kafka_does() {
        use operation::*;
        use resource::*;
        let acls: BTreeSet<AclBinding> = [
            acl(
                TOPIC,
                "orders",
                pattern::LITERAL,
                "User:alice",
                WRITE,
                permission::ALLOW,
            ),
            acl(
                TOPIC,
                "logs-",
                pattern::PREFIXED,
                "User:*",
                READ,
                permission::ALLOW,
            ),
            acl(
                TOPIC,
                "logs-secret",
                pattern::LITERAL,
                "User:bob",
                ALL,
                permission::DENY,
            ),
            acl(
                TOPIC,
                "*",
                pattern::LITERAL,
                "User:ops",
                ALTER_CONFIGS,
                permission::ALLOW,
            ),
            acl(
                GROUP,
                "app",
                pattern::LITERAL,
                "User:alice",
                READ,
                permission::ALLOW,
            ),
        ]
        .into_iter()
        .collect();
        assert!(can(&acls, "User:alice", WRITE, TOPIC, "orders"));
        // WRITE implies DESCRIBE; not READ.
        assert!(can(&acls, "User:alice", DESCRIBE, TOPIC, "orders"));
        assert!(!can(&acls, "User:alice", READ, TOPIC, "orders"));
        assert!(!can(&acls, "User:bob", WRITE, TOPIC, "orders"));
        // A prefix for everyone, and a deny that wins over it for one user.
        assert!(can(&acls, "User:bob", READ, TOPIC, "logs-app"));
        assert!(can(&acls, "User:carol", READ, TOPIC, "logs-secret"));
        assert!(!can(&acls, "User:bob", READ, TOPIC, "logs-secret"));
        // The literal wildcard names every topic; ALTER_CONFIGS implies DESCRIBE_CONFIGS.
        assert!(can(&acls, "User:ops", DESCRIBE_CONFIGS, TOPIC, "anything"));
        assert!(!can(&acls, "User:ops", WRITE, TOPIC, "anything"));
        // Resource types do not mix.
        assert!(!can(&acls, "User:alice", READ, TOPIC, "app"));
        assert!(can(&acls, "User:alice", READ, GROUP, "app"));
    }

    #[test]
    fn no_acl_super_users_and_hosts() {
        use operation::*;
        use resource::*;
        let empty = BTreeSet::new();
        assert!(!can(&empty, "User:alice", READ, TOPIC, "t"));
        let open = Policy {
            super_users: &[],
            allow_if_no_acl: true,
        };
        assert!(authorize(&empty, open, "User:alice", "h", READ, TOPIC, "t"));
        let supers = ["User:admin".to_owned()];
        let admin = Policy {
            super_users: &supers,
            allow_if_no_acl: false,
        };
        assert!(authorize(
            &empty,
            admin,
            "User:admin",
            "h",
            ALTER,
            CLUSTER,
            CLUSTER_NAME
        ));
        let mut from_host = acl(
            TOPIC,
            "t",
            pattern::LITERAL,
            "User:alice",
            READ,
            permission::ALLOW,
        );
        from_host.host = "10.0.0.1".into();
        let acls: BTreeSet<AclBinding> = [from_host].into_iter().collect();
        assert!(authorize(
            &acls,
            POLICY,
            "User:alice",
            "10.0.0.1",
            READ,
            TOPIC,
            "t"
        ));
        assert!(!authorize(
            &acls,
            POLICY,
            "User:alice",
            "10.0.0.2",
            READ,
            TOPIC,
            "t"
        ));
        // A binding on the resource for someone else: not "no ACL", so denied even when
        // allow.everyone.if.no.acl.found is set.
        assert!(!authorize(
            &acls, open, "User:bob", "10.0.0.1", READ, TOPIC, "t"
        ));
    }

    #[test]
    fn filters_match_as_describe_and_delete_acls_define_them() {
        use resource::*;
        let literal = acl(
            TOPIC,
            "orders",
            pattern::LITERAL,
            "User:a",
            operation::READ,
            permission::ALLOW,
        );
        let prefixed = acl(
            TOPIC,
            "ord",
            pattern::PREFIXED,
            "User:a",
            operation::READ,
            permission::ALLOW,
        );
        let any = Filter {
            resource_type: resource::ANY,
            resource_name: None,
            pattern_type: pattern::ANY,
            principal: None,
            host: None,
            operation: operation::ANY,
            permission_type: permission::ANY,
        };
        assert!(any.matches(&literal) && any.matches(&prefixed));
        let matching = Filter {
            resource_name: Some("orders".into()),
            pattern_type: pattern::MATCH,
            ..any.clone()
        };
        assert!(matching.matches(&literal) && matching.matches(&prefixed));
        let exact = Filter {
            resource_name: Some("orders".into()),
            pattern_type: pattern::LITERAL,
            ..any.clone()
        };
        assert!(exact.matches(&literal) && !exact.matches(&prefixed));
        let other_principal = Filter {
            principal: Some("User:b".into()),
            ..any
        };
        assert!(!other_principal.matches(&literal));
    }

    #[test]
    fn bindings_are_validated_and_operations_parse_by_name() {
        let good = acl(
            resource::TOPIC,
            "t",
            pattern::LITERAL,
            "User:a",
            operation::READ,
            permission::ALLOW,
        );
        assert!(validate(&good).is_ok());
        let mut bad = good.clone();
        bad.principal = "alice".into();
        assert!(validate(&bad).is_err());
        let mut bad = good.clone();
        bad.pattern_type = pattern::MATCH;
        assert!(validate(&bad).is_err());
        let mut bad = good;
        bad.resource_type = resource::CLUSTER;
        assert!(validate(&bad).is_err());
        assert_eq!(
            parse_operation("describe-configs"),
            Some(operation::DESCRIBE_CONFIGS)
        );
        assert_eq!(parse_operation("Write"), Some(operation::WRITE));
        assert_eq!(parse_operation("any"), None);
    }
}
