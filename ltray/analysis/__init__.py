"""The paper's analyses (Sec. 3.3, 4.1-4.3) as library functions: the scenarios and their runs (`scenarios`),
pre-trained initialisations (`pretrained`), loss landscapes (`landscape`), figures (`plots`), the shared main
of the experiment scripts (`script`) and reading results back (`summaries`)."""
