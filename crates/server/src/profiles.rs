//! The settings of profiles: the profile consumer (`sluice_consumers::profiles`) and the
//! Profile API ([`crate::profile_api`]).

use std::sync::Arc;

use sluice_identity::Rules;

/// `[profiles]` and `[identity]` of sluice.toml.
#[derive(Debug, Clone)]
pub struct ProfileSettings {
    /// Run the profile consumer (the Profile API answers 503 without it).
    pub enabled: bool,
    /// The space id in Profile API URLs.
    pub space: String,
    /// Tokens accepted by the Profile API (HTTP Basic user name); the admin token always is.
    pub access_tokens: Vec<String>,
    pub rules: Arc<Rules>,
    /// Profile API requests per second for the space (Segment: 100); None: no limit.
    pub rate_limit: Option<f64>,
}

impl Default for ProfileSettings {
    fn default() -> Self {
        ProfileSettings {
            enabled: true,
            space: "default".into(),
            access_tokens: Vec::new(),
            rules: Arc::new(Rules::default()),
            rate_limit: None,
        }
    }
}
