//! Roles and the access matrix that every endpoint is checked against.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A user's role. The wire form is the upper-case name, as in the earlier
/// Django deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Role {
    Customer,
    Driver,
    Dispatcher,
    Admin,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Customer, Role::Driver, Role::Dispatcher, Role::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Customer => "CUSTOMER",
            Role::Driver => "DRIVER",
            Role::Dispatcher => "DISPATCHER",
            Role::Admin => "ADMIN",
        }
    }

    /// Parses the stored or command-line form; case-insensitive.
    pub fn parse(text: &str) -> Option<Role> {
        Role::ALL
            .into_iter()
            .find(|role| role.as_str().eq_ignore_ascii_case(text.trim()))
    }

    /// Depot staff see the whole fleet; customers and drivers see only the
    /// cylinders associated with them.
    pub fn is_staff(self) -> bool {
        matches!(self, Role::Dispatcher | Role::Admin)
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// An action from the access matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    ScanCylinder,
    ViewOwnCylinders,
    ViewAllCylinders,
    RegisterCylinder,
    UpdateStatus,
    AssignCylinder,
    ViewHistory,
    /// Read the user directory and the depot list, which dispatchers need to
    /// pick a driver or customer when they assign a cylinder.
    ViewDirectory,
    ManageUsers,
    /// Create depots.
    ManageDepots,
    /// Set or clear a tamper flag, reissue codes, and see every detail of a
    /// scan: the incident response of depot staff.
    InvestigateIncidents,
}

impl Action {
    pub const ALL: [Action; 11] = [
        Action::ScanCylinder,
        Action::ViewOwnCylinders,
        Action::ViewAllCylinders,
        Action::RegisterCylinder,
        Action::UpdateStatus,
        Action::AssignCylinder,
        Action::ViewHistory,
        Action::ViewDirectory,
        Action::ManageUsers,
        Action::ManageDepots,
        Action::InvestigateIncidents,
    ];
}

/// How far a role may take an action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// Not at all.
    Denied,
    /// Only for cylinders associated with the caller: assigned to a
    /// customer, or in a driver's custody.
    Own,
    /// For every record.
    All,
}

/// Looks a role and action up in the access matrix. Every permission check in the service goes through
/// this function, so the table below is the whole policy.
pub fn reach(role: Role, action: Action) -> Reach {
    use Action::*;
    use Reach::*;

    let staff = role.is_staff();
    match action {
        ScanCylinder | ViewOwnCylinders => All,
        ViewAllCylinders | RegisterCylinder | UpdateStatus | AssignCylinder | ViewDirectory
        | InvestigateIncidents => {
            if staff {
                All
            } else {
                Denied
            }
        }
        ViewHistory => {
            if staff {
                All
            } else {
                Own
            }
        }
        ManageUsers | ManageDepots => {
            if role == Role::Admin {
                All
            } else {
                Denied
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_parse_accepts_any_case() {
        assert_eq!(Role::parse("dispatcher"), Some(Role::Dispatcher));
        assert_eq!(Role::parse(" ADMIN "), Some(Role::Admin));
        assert_eq!(Role::parse("root"), None);
    }

    #[test]
    fn matrix_matches_published_table() {
        use Reach::*;
        // Rows follow the published matrix: customer, driver, dispatcher, admin.
        let table = [
            (Action::ScanCylinder, [All, All, All, All]),
            (Action::ViewOwnCylinders, [All, All, All, All]),
            (Action::ViewAllCylinders, [Denied, Denied, All, All]),
            (Action::RegisterCylinder, [Denied, Denied, All, All]),
            (Action::UpdateStatus, [Denied, Denied, All, All]),
            (Action::AssignCylinder, [Denied, Denied, All, All]),
            (Action::ViewHistory, [Own, Own, All, All]),
            (Action::ViewDirectory, [Denied, Denied, All, All]),
            (Action::ManageUsers, [Denied, Denied, Denied, All]),
            (Action::ManageDepots, [Denied, Denied, Denied, All]),
            (Action::InvestigateIncidents, [Denied, Denied, All, All]),
        ];
        for (action, expected) in table {
            for (role, want) in Role::ALL.into_iter().zip(expected) {
                assert_eq!(reach(role, action), want, "{role} {action:?}");
            }
        }
    }
}
