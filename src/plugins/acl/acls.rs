//! Group memberships (`/consumers/{c}/acls`, `/acls`): the `acls` entity the `acl` plugin reads.
//! Under a consumer a membership is addressed by id or by its group name; at the top level only
//! by id (a group name belongs to many consumers).

use std::sync::LazyLock;

use portcullis_stores::model::entities as defs;

use crate::entities::{EndpointLookup, EntityKind};
use crate::schema::{Field, FieldType, Schema};

/// Schema of `acls`.
pub static ACL_SCHEMA: LazyLock<Schema> = LazyLock::new(|| Schema {
    name: "acls",
    fields: vec![
        Field::new("id", FieldType::Uuid),
        Field::new("created_at", FieldType::Integer),
        Field::new("consumer", FieldType::Foreign("consumers")).required(),
        Field::new("group", FieldType::String)
            .required()
            .pattern("[A-Za-z0-9_-]{1,32}"),
        Field::new("tags", FieldType::Set(Box::new(FieldType::String))),
    ],
    entity_checks: vec![],
});

/// Memberships as an admin entity.
pub static ACLS: LazyLock<EntityKind> = LazyLock::new(|| EntityKind {
    def: &defs::ACLS,
    schema: &ACL_SCHEMA,
    endpoint_key: "group",
    endpoint_lookup: EndpointLookup::UnderParent,
});
