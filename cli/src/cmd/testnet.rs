//! `gpumesh testnet`: not built yet (issue 5).

use crate::cli::TestnetArgs;
use anyhow::{Result, bail};

pub async fn testnet(_args: TestnetArgs) -> Result<i32> {
    bail!("`gpumesh testnet` is not implemented yet; start nodes by hand with `gpumesh node` (see README)")
}
