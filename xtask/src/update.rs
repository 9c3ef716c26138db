//! One DMPO update of a LoRA policy on a rollout, on one device, as a training step runs it
//! (ELBO under the policy and the adapter-free reference, weights, WDCE, AdamW): the update the
//! full-size measurements time (`cargo xtask scale`, `cargo xtask gpu-check measure`).

use burn::module::AutodiffModule;
use burn::optim::Optimizer;
use burn::tensor::backend::AutodiffBackend;
use dllm_model::DiffusionLm;
use dmpo_core::ModelView;
use dmpo_train::algorithm::{dmpo, DmpoDiagnostics, Learner, UpdateInputs};
use dmpo_train::checkpoint::TrainState;
use dmpo_train::distributed::Peer;
use dmpo_train::rollout::Rollout;
use dmpo_train::Recipe;
use rand_chacha::ChaCha8Rng;

/// What stays between updates: AdamW's state, the step counters and the mask stream.
pub struct UpdateState<O> {
    /// The optimiser (its moments appear at the first update).
    pub optimizer: O,
    /// The step counters.
    pub state: TrainState,
    /// The stream the masks are drawn from.
    pub rng: ChaCha8Rng,
}

/// `policy` after one DMPO update on `rollout` with `recipe`'s settings.
pub fn dmpo_update<AB, O>(
    policy: DiffusionLm<AB>,
    recipe: &Recipe,
    rollout: &Rollout,
    s: &mut UpdateState<O>,
    device: &AB::Device,
) -> dmpo_train::Result<(DiffusionLm<AB>, DmpoDiagnostics)>
where
    AB: AutodiffBackend,
    O: Optimizer<DiffusionLm<AB>, AB>,
{
    let no_grad = policy.valid();
    let inputs = UpdateInputs {
        recipe,
        rollout,
        policy: ModelView::policy(&no_grad),
        reference: ModelView::without_adapter(&no_grad),
        device,
        peer: Peer::single(),
    };
    let mut learner = Learner::new(&mut s.optimizer, &recipe.train, 1, &mut s.state);
    dmpo::update(policy, &inputs, &mut learner, &mut s.rng)
}
