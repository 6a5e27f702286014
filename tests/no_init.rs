//! A forgotten `ampire::init()` is a clear error from `build()`, never a chain of processes.
use ampire::{AsyncPool, StartMethod};

#[test]
fn process_methods_need_init_threading_does_not() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        for m in [
            StartMethod::Spawn,
            StartMethod::Fork,
            StartMethod::Forkserver,
        ] {
            let e = AsyncPool::builder()
                .workers(1)
                .start_method(m)
                .build()
                .await
                .unwrap_err();
            assert!(e.is_config(), "{e}");
            assert!(
                e.to_string().contains("ampire::init() was not called"),
                "{e}"
            );
        }
        let pool = AsyncPool::builder()
            .workers(1)
            .start_method(StartMethod::Threading)
            .build()
            .await
            .unwrap();
        assert_eq!(pool.apply(|x: u8| x + 1, 1).await.unwrap(), 2);
    });
}
