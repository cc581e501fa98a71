//! SaslHandshake and SaslAuthenticate (the connection's `ConnectionSecurity` holds the
//! exchange), the SCRAM credential APIs (DescribeUserScramCredentials,
//! AlterUserScramCredentials), the ACL APIs (CreateAcls, DescribeAcls, DeleteAcls) and the
//! client quota APIs (DescribeClientQuotas, AlterClientQuotas; ALTER_CONFIGS on the cluster,
//! DESCRIBE_CONFIGS to read). Their
//! changes go through the controller into the cluster metadata, where every broker's SASL
//! listeners and authorizer read them; managing them takes ALTER (DESCRIBE to read) on the
//! cluster.

use std::collections::{BTreeMap, HashMap};

use kafka_protocol::messages::alter_user_scram_credentials_response::AlterUserScramCredentialsResult;
use kafka_protocol::messages::describe_user_scram_credentials_response::{
    CredentialInfo, DescribeUserScramCredentialsResult,
};
use kafka_protocol::messages::*;
use tern_protocol::error_code;
use tern_replication::metadata::{AclBinding, Command, QuotaEntity};

use super::{str_bytes, Ctx};
use crate::outcome::Outcome;
use crate::security::sasl::{self, Mechanism, SCRAM_ITERATIONS_MAX, SCRAM_ITERATIONS_MIN};
use crate::security::{acl, quota};

pub fn sasl_handshake(ctx: &Ctx<'_>, request: SaslHandshakeRequest) -> Outcome {
    let enabled = if ctx.security.protocol.sasl() {
        ctx.shard.config.sasl_mechanisms.as_slice()
    } else {
        &[]
    };
    let result = ctx
        .security
        .handshake(request.mechanism.as_str(), enabled, || ctx.shard.image());
    let error_code = match result {
        Ok(()) => error_code::NONE,
        Err(refusal) => {
            tracing::debug!(peer = ?ctx.peer, mechanism = %request.mechanism.as_str(), reason = %refusal.message, "SaslHandshake refused");
            refusal.code
        }
    };
    ctx.respond(
        &SaslHandshakeResponse::default()
            .with_error_code(error_code)
            .with_mechanisms(enabled.iter().map(|m| str_bytes(m.name())).collect()),
    )
}

pub fn sasl_authenticate(ctx: &Ctx<'_>, request: SaslAuthenticateRequest) -> Outcome {
    let response = match ctx.security.authenticate(&request.auth_bytes) {
        Ok(reply) => {
            if !ctx.security.needs_authentication() {
                tracing::debug!(peer = ?ctx.peer, principal = %ctx.security.principal(), "authenticated");
            }
            SaslAuthenticateResponse::default()
                .with_auth_bytes(reply.into())
                // 0: no session lifetime, so clients do not re-authenticate (KIP-368).
                .with_session_lifetime_ms(0)
        }
        Err(refusal) => {
            ctx.shard.connection_probe.log_closed(
                ctx.shard.now_ms(),
                ctx.peer,
                "authentication_failed",
                &refusal.message,
            );
            SaslAuthenticateResponse::default()
                .with_error_code(refusal.code)
                .with_error_message(Some(str_bytes(&refusal.message)))
        }
    };
    ctx.respond(&response)
}

pub fn describe_user_scram_credentials(
    ctx: &Ctx<'_>,
    request: DescribeUserScramCredentialsRequest,
) -> Outcome {
    if !ctx.allowed_on_cluster(acl::operation::DESCRIBE) {
        return ctx.respond(
            &DescribeUserScramCredentialsResponse::default()
                .with_error_code(error_code::CLUSTER_AUTHORIZATION_FAILED)
                .with_error_message(Some(str_bytes("not allowed to describe users"))),
        );
    }
    let image = ctx.shard.image();
    let credentials = &image.scram_credentials;
    let describe = |user: &str, by_mechanism: &BTreeMap<String, _>| {
        DescribeUserScramCredentialsResult::default()
            .with_user(str_bytes(user))
            .with_credential_infos(
                by_mechanism
                    .iter()
                    .filter_map(
                        |(name, credential): (
                            &String,
                            &tern_replication::metadata::ScramCredential,
                        )| {
                            let mechanism = Mechanism::parse(name)?;
                            Some(
                                CredentialInfo::default()
                                    .with_mechanism(mechanism.scram_id())
                                    .with_iterations(credential.iterations as i32),
                            )
                        },
                    )
                    .collect(),
            )
    };
    let results = match request.users {
        None => credentials
            .iter()
            .map(|(user, by_mechanism)| describe(user, by_mechanism))
            .collect(),
        Some(users) if users.is_empty() => credentials
            .iter()
            .map(|(user, by_mechanism)| describe(user, by_mechanism))
            .collect(),
        Some(users) => {
            let mut seen: HashMap<&str, usize> = HashMap::new();
            for user in &users {
                *seen.entry(user.name.as_str()).or_default() += 1;
            }
            let mut results = Vec::with_capacity(users.len());
            for user in &users {
                let name = user.name.as_str();
                if seen.get(name) == Some(&usize::MAX) {
                    continue; // a duplicate already answered
                }
                let result = if seen[name] > 1 {
                    seen.insert(name, usize::MAX);
                    DescribeUserScramCredentialsResult::default()
                        .with_user(str_bytes(name))
                        .with_error_code(error_code::DUPLICATE_RESOURCE)
                        .with_error_message(Some(str_bytes(&format!(
                            "cannot describe user {name} twice in one request"
                        ))))
                } else {
                    match credentials.get(name) {
                        Some(by_mechanism) => describe(name, by_mechanism),
                        None => DescribeUserScramCredentialsResult::default()
                            .with_user(str_bytes(name))
                            .with_error_code(error_code::RESOURCE_NOT_FOUND)
                            .with_error_message(Some(str_bytes(&format!(
                                "user {name} has no SCRAM credential"
                            )))),
                    }
                };
                results.push(result);
            }
            results
        }
    };
    ctx.respond(&DescribeUserScramCredentialsResponse::default().with_results(results))
}

/// The commands for one user's alterations, or the error that refuses all of them (Kafka
/// answers per user).
fn user_commands(
    user: &str,
    has: impl Fn(Mechanism) -> bool,
    deletions: &[(Mechanism, i8)],
    upsertions: &[(
        Option<Mechanism>,
        &alter_user_scram_credentials_request::ScramCredentialUpsertion,
    )],
) -> Result<Vec<Command>, (i16, String)> {
    if user.is_empty() {
        return Err((
            error_code::UNACCEPTABLE_CREDENTIAL,
            "the user name is empty".into(),
        ));
    }
    let mut mechanisms: Vec<Mechanism> = deletions.iter().map(|(m, _)| *m).collect();
    let mut commands = Vec::new();
    for (mechanism, upsertion) in upsertions {
        let Some(mechanism) = mechanism else {
            return Err((
                error_code::UNSUPPORTED_SASL_MECHANISM,
                format!("unknown SCRAM mechanism {}", upsertion.mechanism),
            ));
        };
        if !(SCRAM_ITERATIONS_MIN..=SCRAM_ITERATIONS_MAX).contains(&upsertion.iterations) {
            return Err((
                error_code::UNACCEPTABLE_CREDENTIAL,
                format!(
                    "iterations must be {SCRAM_ITERATIONS_MIN}..={SCRAM_ITERATIONS_MAX}, not {}",
                    upsertion.iterations
                ),
            ));
        }
        if upsertion.salt.is_empty() || upsertion.salted_password.is_empty() {
            return Err((
                error_code::UNACCEPTABLE_CREDENTIAL,
                "the salt and salted password must not be empty".into(),
            ));
        }
        mechanisms.push(*mechanism);
        commands.push(Command::UpsertScramCredential {
            user: user.to_owned(),
            mechanism: mechanism.name().to_owned(),
            credential: sasl::credential(
                *mechanism,
                &upsertion.salted_password,
                &upsertion.salt,
                upsertion.iterations as u32,
            ),
        });
    }
    let unique = {
        let mut sorted = mechanisms.clone();
        sorted.sort();
        sorted.dedup();
        sorted.len()
    };
    if unique != mechanisms.len() {
        return Err((
            error_code::DUPLICATE_RESOURCE,
            format!("a mechanism of user {user} is altered twice in one request"),
        ));
    }
    if let Some((mechanism, _)) = deletions.iter().find(|(m, _)| !has(*m)) {
        return Err((
            error_code::RESOURCE_NOT_FOUND,
            format!(
                "user {user} has no {} credential to delete",
                mechanism.name()
            ),
        ));
    }
    for (mechanism, _) in deletions {
        commands.push(Command::DeleteScramCredential {
            user: user.to_owned(),
            mechanism: mechanism.name().to_owned(),
        });
    }
    Ok(commands)
}

pub async fn alter_user_scram_credentials(
    ctx: &Ctx<'_>,
    request: AlterUserScramCredentialsRequest,
) -> Outcome {
    // Per user, in the order users first appear.
    let mut users: Vec<String> = Vec::new();
    let mut deletions: HashMap<String, Vec<(Mechanism, i8)>> = HashMap::new();
    let mut unknown_deletion: HashMap<String, i8> = HashMap::new();
    let mut upsertions: HashMap<String, Vec<_>> = HashMap::new();
    let note = |users: &mut Vec<String>, name: &str| {
        if !users.iter().any(|u| u == name) {
            users.push(name.to_owned());
        }
    };
    for deletion in &request.deletions {
        let name = deletion.name.as_str();
        note(&mut users, name);
        match Mechanism::from_scram_id(deletion.mechanism) {
            Some(mechanism) => deletions
                .entry(name.to_owned())
                .or_default()
                .push((mechanism, deletion.mechanism)),
            None => {
                unknown_deletion.insert(name.to_owned(), deletion.mechanism);
            }
        }
    }
    for upsertion in &request.upsertions {
        let name = upsertion.name.as_str();
        note(&mut users, name);
        upsertions
            .entry(name.to_owned())
            .or_default()
            .push((Mechanism::from_scram_id(upsertion.mechanism), upsertion));
    }
    let image = ctx.shard.image();
    let allowed = ctx.allowed_on_cluster(acl::operation::ALTER);
    let mut outcomes: Vec<Option<(i16, String)>> = Vec::with_capacity(users.len());
    let mut commands = Vec::new();
    // Which user each command belongs to, to map the controller's answers back.
    let mut owners = Vec::new();
    for (index, user) in users.iter().enumerate() {
        if !allowed {
            outcomes.push(Some((
                error_code::CLUSTER_AUTHORIZATION_FAILED,
                "not allowed to alter users".into(),
            )));
            continue;
        }
        if let Some(mechanism) = unknown_deletion.get(user) {
            outcomes.push(Some((
                error_code::UNSUPPORTED_SASL_MECHANISM,
                format!("unknown SCRAM mechanism {mechanism}"),
            )));
            continue;
        }
        let empty = Vec::new();
        let user_deletions = deletions.get(user).unwrap_or(&empty);
        let user_upsertions = upsertions.get(user).map(Vec::as_slice).unwrap_or(&[]);
        let has = |mechanism: Mechanism| {
            image
                .scram_credentials
                .get(user)
                .is_some_and(|m| m.contains_key(mechanism.name()))
        };
        match user_commands(user, has, user_deletions, user_upsertions) {
            Ok(user_commands) => {
                owners.extend(std::iter::repeat_n(index, user_commands.len()));
                commands.extend(user_commands);
                outcomes.push(None);
            }
            Err(refusal) => outcomes.push(Some(refusal)),
        }
    }
    super::admin::run_commands_into(ctx.shard, commands, owners, &mut outcomes).await;
    let results = users
        .iter()
        .zip(outcomes)
        .map(|(user, outcome)| {
            let result = AlterUserScramCredentialsResult::default().with_user(str_bytes(user));
            match outcome {
                None => result,
                Some((code, message)) => result
                    .with_error_code(code)
                    .with_error_message(Some(str_bytes(&message))),
            }
        })
        .collect();
    ctx.respond(&AlterUserScramCredentialsResponse::default().with_results(results))
}

fn binding_of(creation: &create_acls_request::AclCreation) -> AclBinding {
    AclBinding {
        resource_type: creation.resource_type,
        resource_name: creation.resource_name.to_string(),
        pattern_type: creation.resource_pattern_type,
        principal: creation.principal.to_string(),
        host: creation.host.to_string(),
        operation: creation.operation,
        permission_type: creation.permission_type,
    }
}

/// The `acl::Filter` a DescribeAcls request or a DeleteAcls filter carries (generated types
/// of the same field names).
macro_rules! filter_of {
    ($wire:expr) => {
        acl::Filter {
            resource_type: $wire.resource_type_filter,
            resource_name: $wire.resource_name_filter.as_ref().map(|n| n.to_string()),
            pattern_type: $wire.pattern_type_filter,
            principal: $wire.principal_filter.as_ref().map(|p| p.to_string()),
            host: $wire.host_filter.as_ref().map(|h| h.to_string()),
            operation: $wire.operation,
            permission_type: $wire.permission_type,
        }
    };
}

/// Why a DescribeAcls or DeleteAcls filter matches nothing by construction.
fn check_filter(filter: &acl::Filter) -> Result<(), String> {
    if filter.resource_type < acl::resource::ANY || filter.pattern_type < acl::pattern::ANY {
        return Err("the filter's resource or pattern type is unknown".into());
    }
    if filter.operation < acl::operation::ANY || filter.permission_type < acl::permission::ANY {
        return Err("the filter's operation or permission type is unknown".into());
    }
    Ok(())
}

pub async fn create_acls(ctx: &Ctx<'_>, request: CreateAclsRequest) -> Outcome {
    let allowed = ctx.allowed_on_cluster(acl::operation::ALTER);
    let mut outcomes: Vec<Option<(i16, String)>> = Vec::with_capacity(request.creations.len());
    let mut bindings = Vec::new();
    for creation in &request.creations {
        let binding = binding_of(creation);
        if !allowed {
            outcomes.push(Some((
                error_code::CLUSTER_AUTHORIZATION_FAILED,
                "not allowed to alter the cluster's ACLs".into(),
            )));
        } else if let Err(reason) = acl::validate(&binding) {
            outcomes.push(Some((error_code::INVALID_REQUEST, reason)));
        } else {
            outcomes.push(None);
            bindings.push(binding);
        }
    }
    if !bindings.is_empty() {
        let failure = match super::admin::run_commands(
            ctx.shard,
            vec![Command::CreateAcls { acls: bindings }],
        )
        .await
        {
            Ok(results) => results
                .into_iter()
                .find_map(Result::err)
                .map(|e| (error_code::UNKNOWN_SERVER_ERROR, e.to_string())),
            Err(error) => Some((error.code(), error.to_string())),
        };
        if let Some((code, message)) = failure {
            for outcome in outcomes.iter_mut().filter(|o| o.is_none()) {
                *outcome = Some((code, message.clone()));
            }
        }
    }
    let results = outcomes
        .into_iter()
        .map(|outcome| {
            let result = create_acls_response::AclCreationResult::default();
            match outcome {
                None => result,
                Some((code, message)) => result
                    .with_error_code(code)
                    .with_error_message(Some(str_bytes(&message))),
            }
        })
        .collect();
    ctx.respond(&CreateAclsResponse::default().with_results(results))
}

pub fn describe_acls(ctx: &Ctx<'_>, request: DescribeAclsRequest) -> Outcome {
    if !ctx.allowed_on_cluster(acl::operation::DESCRIBE) {
        return ctx.respond(
            &DescribeAclsResponse::default()
                .with_error_code(error_code::CLUSTER_AUTHORIZATION_FAILED)
                .with_error_message(Some(str_bytes(
                    "not allowed to describe the cluster's ACLs",
                ))),
        );
    }
    let filter = filter_of!(request);
    if let Err(reason) = check_filter(&filter) {
        return ctx.respond(
            &DescribeAclsResponse::default()
                .with_error_code(error_code::INVALID_REQUEST)
                .with_error_message(Some(str_bytes(&reason))),
        );
    }
    let image = ctx.shard.image();
    // Grouped by resource, as Kafka answers.
    let mut resources: BTreeMap<(i8, &str, i8), Vec<describe_acls_response::AclDescription>> =
        BTreeMap::new();
    for binding in image.acls.iter().filter(|b| filter.matches(b)) {
        resources
            .entry((
                binding.resource_type,
                binding.resource_name.as_str(),
                binding.pattern_type,
            ))
            .or_default()
            .push(
                describe_acls_response::AclDescription::default()
                    .with_principal(str_bytes(&binding.principal))
                    .with_host(str_bytes(&binding.host))
                    .with_operation(binding.operation)
                    .with_permission_type(binding.permission_type),
            );
    }
    let resources = resources
        .into_iter()
        .map(|((resource_type, name, pattern_type), acls)| {
            describe_acls_response::DescribeAclsResource::default()
                .with_resource_type(resource_type)
                .with_resource_name(str_bytes(name))
                .with_pattern_type(pattern_type)
                .with_acls(acls)
        })
        .collect();
    ctx.respond(&DescribeAclsResponse::default().with_resources(resources))
}

pub async fn delete_acls(ctx: &Ctx<'_>, request: DeleteAclsRequest) -> Outcome {
    let allowed = ctx.allowed_on_cluster(acl::operation::ALTER);
    let image = ctx.shard.image();
    let mut doomed: Vec<AclBinding> = Vec::new();
    let mut results = Vec::with_capacity(request.filters.len());
    for wire in &request.filters {
        let filter = filter_of!(wire);
        let result = delete_acls_response::DeleteAclsFilterResult::default();
        if !allowed {
            results.push(
                result
                    .with_error_code(error_code::CLUSTER_AUTHORIZATION_FAILED)
                    .with_error_message(Some(str_bytes("not allowed to alter the cluster's ACLs"))),
            );
            continue;
        }
        if let Err(reason) = check_filter(&filter) {
            results.push(
                result
                    .with_error_code(error_code::INVALID_REQUEST)
                    .with_error_message(Some(str_bytes(&reason))),
            );
            continue;
        }
        let matching: Vec<delete_acls_response::DeleteAclsMatchingAcl> = image
            .acls
            .iter()
            .filter(|b| filter.matches(b))
            .map(|binding| {
                doomed.push(binding.clone());
                delete_acls_response::DeleteAclsMatchingAcl::default()
                    .with_resource_type(binding.resource_type)
                    .with_resource_name(str_bytes(&binding.resource_name))
                    .with_pattern_type(binding.pattern_type)
                    .with_principal(str_bytes(&binding.principal))
                    .with_host(str_bytes(&binding.host))
                    .with_operation(binding.operation)
                    .with_permission_type(binding.permission_type)
            })
            .collect();
        results.push(result.with_matching_acls(matching));
    }
    if !doomed.is_empty() {
        let failure =
            match super::admin::run_commands(ctx.shard, vec![Command::DeleteAcls { acls: doomed }])
                .await
            {
                Ok(outcome) => outcome
                    .into_iter()
                    .find_map(Result::err)
                    .map(|e| (error_code::UNKNOWN_SERVER_ERROR, e.to_string())),
                Err(error) => Some((error.code(), error.to_string())),
            };
        if let Some((code, message)) = failure {
            for result in results.iter_mut().filter(|r| r.error_code == 0) {
                result.error_code = code;
                result.error_message = Some(str_bytes(&message));
                result.matching_acls.clear();
            }
        }
    }
    ctx.respond(&DeleteAclsResponse::default().with_filter_results(results))
}

/// An entity as AlterClientQuotas names it, checked and sorted as the image keeps it.
fn quota_entity(
    parts: impl Iterator<Item = (String, Option<String>)>,
) -> Result<QuotaEntity, String> {
    let mut entity: QuotaEntity = Vec::new();
    for (kind, name) in parts {
        if kind != quota::USER && kind != quota::CLIENT_ID {
            return Err(format!(
                "entity type '{kind}' is not supported (user, client-id)"
            ));
        }
        if entity.iter().any(|(k, _)| *k == kind) {
            return Err(format!("entity type '{kind}' appears twice"));
        }
        if name.as_deref() == Some("") && kind == quota::USER {
            return Err("an empty user name".into());
        }
        entity.push((kind, name));
    }
    if entity.is_empty() {
        return Err("the entity names nothing".into());
    }
    entity.sort();
    Ok(entity)
}

pub async fn alter_client_quotas(ctx: &Ctx<'_>, request: AlterClientQuotasRequest) -> Outcome {
    let allowed = ctx.allowed_on_cluster(acl::operation::ALTER_CONFIGS);
    let mut outcomes: Vec<Option<(i16, String)>> = Vec::with_capacity(request.entries.len());
    let mut commands = Vec::new();
    let mut owners = Vec::new();
    for (index, entry) in request.entries.iter().enumerate() {
        let checked = (|| -> Result<Command, (i16, String)> {
            if !allowed {
                return Err((
                    error_code::CLUSTER_AUTHORIZATION_FAILED,
                    "not allowed to alter client quotas".into(),
                ));
            }
            let invalid = |message: String| (error_code::INVALID_REQUEST, message);
            let entity = quota_entity(entry.entity.iter().map(|part| {
                (
                    part.entity_type.to_string(),
                    part.entity_name.as_ref().map(|n| n.to_string()),
                )
            }))
            .map_err(invalid)?;
            let mut set = BTreeMap::new();
            let mut remove = Vec::new();
            for op in &entry.ops {
                let key = op.key.to_string();
                if !quota::ENFORCED.contains(&key.as_str()) {
                    return Err(invalid(format!(
                        "quota '{key}' is not supported (producer_byte_rate, consumer_byte_rate, request_percentage)"
                    )));
                }
                if op.remove {
                    remove.push(key);
                } else if !(op.value.is_finite() && op.value > 0.0) {
                    return Err(invalid(format!("quota '{key}' must be positive")));
                } else {
                    set.insert(key, op.value.to_string());
                }
            }
            Ok(Command::AlterClientQuotas {
                entity,
                set,
                remove,
            })
        })();
        match checked {
            Ok(command) => {
                outcomes.push(None);
                if !request.validate_only {
                    owners.push(index);
                    commands.push(command);
                }
            }
            Err(refusal) => outcomes.push(Some(refusal)),
        }
    }
    super::admin::run_commands_into(ctx.shard, commands, owners, &mut outcomes).await;
    let entries = request
        .entries
        .iter()
        .zip(outcomes)
        .map(|(entry, outcome)| {
            let result = alter_client_quotas_response::EntryData::default().with_entity(
                entry
                    .entity
                    .iter()
                    .map(|part| {
                        alter_client_quotas_response::EntityData::default()
                            .with_entity_type(part.entity_type.clone())
                            .with_entity_name(part.entity_name.clone())
                    })
                    .collect(),
            );
            match outcome {
                None => result,
                Some((code, message)) => result
                    .with_error_code(code)
                    .with_error_message(Some(str_bytes(&message))),
            }
        })
        .collect();
    ctx.respond(&AlterClientQuotasResponse::default().with_entries(entries))
}

pub fn describe_client_quotas(ctx: &Ctx<'_>, request: DescribeClientQuotasRequest) -> Outcome {
    const EXACT: i8 = 0;
    const DEFAULT: i8 = 1;
    const ANY: i8 = 2;
    if !ctx.allowed_on_cluster(acl::operation::DESCRIBE_CONFIGS) {
        return ctx.respond(
            &DescribeClientQuotasResponse::default()
                .with_error_code(error_code::CLUSTER_AUTHORIZATION_FAILED)
                .with_error_message(Some(str_bytes("not allowed to describe client quotas"))),
        );
    }
    if request
        .components
        .iter()
        .any(|c| !matches!(c.match_type, EXACT | DEFAULT | ANY))
    {
        return ctx.respond(
            &DescribeClientQuotasResponse::default()
                .with_error_code(error_code::INVALID_REQUEST)
                .with_error_message(Some(str_bytes("unknown match type"))),
        );
    }
    let image = ctx.shard.image();
    let matches = |entity: &QuotaEntity| {
        let each = request.components.iter().all(|component| {
            let kind = component.entity_type.as_str();
            entity.iter().any(|(k, name)| {
                k == kind
                    && match component.match_type {
                        EXACT => name.as_deref() == component._match.as_ref().map(|m| m.as_str()),
                        DEFAULT => name.is_none(),
                        _ => true,
                    }
            })
        });
        let only = !request.strict
            || entity.iter().all(|(k, _)| {
                request
                    .components
                    .iter()
                    .any(|c| c.entity_type.as_str() == k)
            });
        each && only
    };
    let entries = image
        .client_quotas
        .iter()
        .filter(|quota| matches(&quota.entity))
        .map(|quota| {
            describe_client_quotas_response::EntryData::default()
                .with_entity(
                    quota
                        .entity
                        .iter()
                        .map(|(kind, name)| {
                            describe_client_quotas_response::EntityData::default()
                                .with_entity_type(str_bytes(kind))
                                .with_entity_name(name.as_deref().map(str_bytes))
                        })
                        .collect(),
                )
                .with_values(
                    quota
                        .values
                        .iter()
                        .filter_map(|(key, value)| {
                            Some(
                                describe_client_quotas_response::ValueData::default()
                                    .with_key(str_bytes(key))
                                    .with_value(value.parse().ok()?),
                            )
                        })
                        .collect(),
                )
        })
        .collect();
    ctx.respond(&DescribeClientQuotasResponse::default().with_entries(Some(entries)))
}
