//! Prompts equal the reference strings byte for byte (fixture rendered by running the
//! DMPO `data_utils.py` and d1 `eval/*.py` templates in Python).

use rewards::prompts::{eval_prompt, training_prompt};
use rewards::TaskItem;

#[test]
fn prompts_match_reference() {
    let want: std::collections::BTreeMap<String, String> =
        serde_json::from_str(include_str!("fixtures/prompts.json")).unwrap();
    let gsm = TaskItem::gsm8k("Janet has 3 apples. How many?", "3");
    let math = TaskItem::math("What is $1+1$?", "2");
    let cd = TaskItem::countdown(vec![30, 100, 93], 23);
    let sd = TaskItem::sudoku("3102200002100320", "3142243142131324");
    let got = [
        ("train_gsm8k", training_prompt(&gsm)),
        ("train_math", training_prompt(&math)),
        ("train_countdown", training_prompt(&cd)),
        ("train_sudoku", training_prompt(&sd)),
        ("eval_gsm8k", eval_prompt(&gsm)),
        ("eval_math", eval_prompt(&math)),
        ("eval_countdown", eval_prompt(&cd)),
        ("eval_sudoku", eval_prompt(&sd)),
    ];
    for (k, v) in got {
        assert_eq!(v, want[k], "{k}");
    }
}
