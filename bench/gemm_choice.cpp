// How the GEMM library was chosen: OpenBLAS sgemm vs oneDNN (dnnl_sgemm, and the matmul primitive)
// at square and attention-shaped sizes, median of repeated calls, GFLOP/s. Standalone (OpenBLAS is
// not an eformer dependency):
//   apt-get install libopenblas-dev libdnnl-dev
//   g++ -O2 -fopenmp bench/gemm_choice.cpp -o /tmp/gemm_choice -ldnnl -lopenblas
//   OPENBLAS_NUM_THREADS=2 OMP_NUM_THREADS=2 /tmp/gemm_choice
#include <dnnl.hpp>
#include <cblas.h>
#include <chrono>
#include <vector>
#include <cstdio>
#include <algorithm>
using namespace std::chrono;
template<class F> double med(F f,int reps){ std::vector<double> t; f(); for(int i=0;i<reps;i++){auto a=steady_clock::now(); f(); t.push_back(duration<double>(steady_clock::now()-a).count());} std::sort(t.begin(),t.end()); return t[t.size()/2];}
int main(){
  int shapes[][3]={{256,256,256},{512,512,512},{1024,1024,1024},{2048,2048,2048},{4096,64,4096},{4096,4096,64},{2048,64,2048}};
  for(auto&s:shapes){int M=s[0],K=s[1],N=s[2];
    std::vector<float>A(M*K,1.f),B(K*N,.5f),C(M*N);
    double fl=2.0*M*N*K; int reps= fl>1e9?5:30;
    double t1=med([&]{cblas_sgemm(CblasRowMajor,CblasNoTrans,CblasNoTrans,M,N,K,1,A.data(),K,B.data(),N,0,C.data(),N);},reps);
    double t2=med([&]{dnnl_sgemm('N','N',M,N,K,1,A.data(),K,B.data(),N,0,C.data(),N);},reps);
    double t3=med([&]{dnnl_sgemm('N','T',M,N,K,1,A.data(),K,B.data(),K,0,C.data(),N);},reps);
    dnnl::engine eng(dnnl::engine::kind::cpu,0); dnnl::stream st(eng);
    using dt=dnnl::memory::data_type; using tag=dnnl::memory::format_tag;
    dnnl::memory::desc a({M,K},dt::f32,tag::ab), b({K,N},dt::f32,tag::ab), c({M,N},dt::f32,tag::ab);
    dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(a,b,c),eng); dnnl::matmul mm(pd);
    dnnl::memory ma(a,eng,A.data()),mb(b,eng,B.data()),mc(c,eng,C.data());
    double t4=med([&]{mm.execute(st,{{DNNL_ARG_SRC,ma},{DNNL_ARG_WEIGHTS,mb},{DNNL_ARG_DST,mc}}); st.wait();},reps);
    printf("%5d %5d %5d  openblas %6.1f  dnnl_sgemm %6.1f  dnnl_sgemm_NT %6.1f  dnnl_matmul %6.1f GFLOP/s\n",M,K,N,fl/t1/1e9,fl/t2/1e9,fl/t3/1e9,fl/t4/1e9);
  }
}
