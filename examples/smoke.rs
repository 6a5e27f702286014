use ampire::{AsyncPool, StartMethod};
fn square(x: u64) -> u64 {
    x * x
}
fn boom(x: u64) -> u64 {
    if x == 3 {
        panic!("boom at {x}")
    }
    x
}
fn main() -> Result<(), ampire::Error> {
    ampire::init();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        for m in StartMethod::ALL {
            let t = std::time::Instant::now();
            let pool = AsyncPool::builder()
                .workers(2)
                .start_method(m)
                .build()
                .await?;
            let one = pool.apply(square, 7).await?;
            let all = pool.map(square, 0..100_000u64).await?;
            let e = pool.map(boom, 0..10u64).await.unwrap_err();
            println!(
                "{m}: {one} {} {:?} err={e} in {:?}",
                all.len(),
                &all[..4],
                t.elapsed()
            );
            pool.shutdown().await?;
        }
        Ok(())
    })
}
