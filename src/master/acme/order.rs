//! One issuance (RFC 8555 §7): the account (made once, then kept in the
//! state folder), an order for the config's names, each authorization's
//! challenge answered by every worker, then the new key's CSR and the
//! chain the ACME server signs.

use std::time::Duration;

use instant_acme::{
    Account, AuthorizationStatus, ChallengeType, Identifier, NewAccount, NewOrder, OrderStatus,
    RetryPolicy,
};

use super::http::Https;
use super::publish::{Answer, Publisher};
use super::store;
use crate::plan::{AcmeConfig, CertifiedPem};

/// How the ACME server checks that the cluster controls a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// HTTP-01, answered on the cluster's plain listeners (port 80).
    Http01,
    /// TLS-ALPN-01, answered on the TLS listeners (port 443).
    TlsAlpn01,
}

/// How long the ACME server may take to check the answers, and then to
/// sign: its own pace, polled with a growing interval.
const VALIDATION: RetryPolicy = RetryPolicy::new()
    .initial_delay(Duration::from_millis(250))
    .backoff(1.5)
    .timeout(Duration::from_secs(120));

#[derive(Debug, thiserror::Error)]
pub enum OrderError {
    #[error(transparent)]
    Acme(#[from] instant_acme::Error),
    #[error("cannot keep the account in {path}: {source}")]
    Account {
        path: String,
        source: std::io::Error,
    },
    #[error("the ACME server offers no {method:?} challenge for {name}")]
    NoChallenge { name: String, method: Method },
    #[error("the authorization of {name} is {status:?}")]
    Authorization {
        name: String,
        status: AuthorizationStatus,
    },
    #[error("the order ended {0:?}")]
    Order(OrderStatus),
    #[error("cannot make the TLS-ALPN-01 certificate: {0}")]
    Certificate(#[from] rcgen::Error),
}

/// Orders a certificate for `config.domains`, answering by `method`.
pub async fn issue(
    config: &AcmeConfig,
    method: Method,
    publisher: &Publisher,
) -> Result<CertifiedPem, OrderError> {
    let account = account(config).await?;
    let identifiers: Vec<Identifier> = config
        .domains
        .iter()
        .map(|d| Identifier::Dns(d.clone()))
        .collect();
    let mut order = account.new_order(&NewOrder::new(&identifiers)).await?;
    let mut shown = Vec::new();
    let answered = answer(&mut order, method, publisher, &mut shown).await;
    let outcome = match answered {
        Ok(()) => order
            .poll_ready(&VALIDATION)
            .await
            .map_err(OrderError::from),
        Err(e) => Err(e),
    };
    publisher.withdraw(&shown);
    match outcome? {
        OrderStatus::Ready => {}
        status => return Err(OrderError::Order(status)),
    }
    let key = order.finalize().await?;
    let chain = order.poll_certificate(&VALIDATION).await?;
    Ok(CertifiedPem { chain, key })
}

/// The account for the config's directory: the one kept in the state
/// folder, or a new one, kept there.
async fn account(config: &AcmeConfig) -> Result<Account, OrderError> {
    let path = store::account_file(&config.state_dir, &config.directory);
    let http = || Https::new(config.roots.as_ref()).map(Box::new);
    if let Some(credentials) = store::load_account(&path) {
        return Ok(Account::builder_with_http(http()?)
            .from_credentials(credentials)
            .await?);
    }
    let contact = config.email.as_ref().map(|e| format!("mailto:{e}"));
    let contact: Vec<&str> = contact.iter().map(String::as_str).collect();
    let new = NewAccount {
        contact: &contact,
        terms_of_service_agreed: true,
        only_return_existing: false,
    };
    let (account, credentials) = Account::builder_with_http(http()?)
        .create(&new, config.directory.clone(), None)
        .await?;
    store::save_account(&path, &credentials).map_err(|source| OrderError::Account {
        path: path.display().to_string(),
        source,
    })?;
    tracing::info!(directory = %config.directory, account = account.id(), "ACME account made");
    Ok(account)
}

/// Shows the answer of each pending authorization from every worker, then
/// tells the ACME server each is ready (not before: it may check at once);
/// `shown` collects what to withdraw afterwards.
async fn answer(
    order: &mut instant_acme::Order,
    method: Method,
    publisher: &Publisher,
    shown: &mut Vec<Answer>,
) -> Result<(), OrderError> {
    let kind = match method {
        Method::Http01 => ChallengeType::Http01,
        Method::TlsAlpn01 => ChallengeType::TlsAlpn01,
    };
    let mut authorizations = order.authorizations();
    while let Some(authorization) = authorizations.next().await {
        let mut authorization = authorization?;
        let name = authorization.identifier().to_string();
        match authorization.status {
            AuthorizationStatus::Pending => {}
            // Validated recently, for this account: nothing to show.
            AuthorizationStatus::Valid => continue,
            status => return Err(OrderError::Authorization { name, status }),
        }
        let challenge =
            authorization
                .challenge(kind.clone())
                .ok_or_else(|| OrderError::NoChallenge {
                    name: name.clone(),
                    method,
                })?;
        let key_authorization = challenge.key_authorization();
        shown.push(match method {
            Method::Http01 => Answer::Http {
                token: challenge.token.clone(),
                key_authorization: key_authorization.as_str().to_owned(),
            },
            Method::TlsAlpn01 => Answer::TlsAlpn {
                certificate: crate::tls::acme_identifier(
                    &name,
                    key_authorization.digest().as_ref(),
                )?,
                name,
            },
        });
    }
    publisher.show(shown).await;
    let mut authorizations = order.authorizations();
    while let Some(authorization) = authorizations.next().await {
        let mut authorization = authorization?;
        if authorization.status == AuthorizationStatus::Pending {
            if let Some(mut challenge) = authorization.challenge(kind.clone()) {
                challenge.set_ready().await?;
            }
        }
    }
    Ok(())
}
